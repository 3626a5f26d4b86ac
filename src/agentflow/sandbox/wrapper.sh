# agentflow step wrapper (POSIX sh: works in images with no bash).
# Usage: sh wrapper.sh WORKDIR
# Runs run.sh (next to this file) with bash where there is one, else sh, in its own process
# group, stdin from /dev/null, every byte of output to output.log and to the terminal.
# Records pid (= the process group to kill), started_at, and exit_code (written last,
# atomically: its presence means the step is over and output.log is complete), then
# writes the step's id to the run's wake FIFO.
d=$(cd "$(dirname "$0")" && pwd)
cd "$1" || { echo "agentflow: cannot enter $1" | tee -a "$d/output.log"; echo 127 >"$d/exit_code.tmp"; mv "$d/exit_code.tmp" "$d/exit_code"; exit 127; }
shell=sh
command -v bash >/dev/null 2>&1 && shell=bash
rm -f "$d/fifo" "$d/exit_code" "$d/exit_code.tmp" "$d/hangup"
# The exit code's file is made now, while there is room: at the end it is written in place
# (no new block) and renamed, so that even a disk the step filled up records it.
echo "    " >"$d/exit_code.tmp"
mkfifo "$d/fifo"
if [ -n "${AGENTFLOW_SECRETS:-}" ]; then
  # Mask the values of the named secrets (read from the environment, never from argv)
  # before a byte reaches the log or the screen.
  awk 'BEGIN { n = split(ENVIRON["AGENTFLOW_SECRETS"], names, " ") }
    { line = $0
      for (i = 1; i <= n; i++) {
        s = ENVIRON[names[i]]; if (s == "") continue
        out = ""; rest = line
        while ((j = index(rest, s)) > 0) { out = out substr(rest, 1, j - 1) "***"; rest = substr(rest, j + length(s)) }
        line = out rest
      }
      print line; fflush() }' <"$d/fifo" | tee -a "$d/output.log" &
else
  tee -a "$d/output.log" <"$d/fifo" &
fi
tee_pid=$!
date +%s >"$d/started_at"
# The step gets a process group of its own, which a timeout or stop kills whole: the
# shell's job control on a terminal (a job keeps Ctrl-C, which a plain background command
# would ignore), else setsid (a background child is no group leader, so setsid does not
# fork, and $! leads the new group).
if [ -t 1 ] || ! command -v setsid >/dev/null 2>&1; then
  set -m
  $shell "$d/run.sh" >"$d/fifo" 2>&1 </dev/null &
  pid=$!
  set +m
else
  setsid $shell "$d/run.sh" >"$d/fifo" 2>&1 </dev/null &
  pid=$!
fi
echo "$pid" >"$d/pid"
# Ctrl-C or a hangup in the window is passed on to the step.
trap 'kill -INT -"$pid" 2>/dev/null' INT
# A hangup is the window going away (a killed tmux server): the step is lost, not failed.
trap 'hup=1; kill -HUP -"$pid" 2>/dev/null' HUP
trap 'kill -TERM -"$pid" 2>/dev/null' TERM
while :; do
  wait "$pid"
  code=$?
  # wait returns early (>128) when a trapped signal arrives; the step may still run.
  kill -0 "$pid" 2>/dev/null || break
done
# What the step left running in its group goes with it (use `service: true` for servers).
kill -TERM -"$pid" 2>/dev/null
wait "$tee_pid"
rm -f "$d/fifo"
[ -z "${hup:-}" ] || : >"$d/hangup"
printf '%4d\n' "$code" 1<>"$d/exit_code.tmp"
mv "$d/exit_code.tmp" "$d/exit_code"
# Wake the orchestrator at once. Opened read-write, a FIFO never blocks, even with nobody
# reading (the orchestrator may be dead; then the line is simply dropped).
wake="$d/../.wake"
if [ -p "$wake" ]; then
  { echo "${d##*/}" >&3; } 3<>"$wake" 2>/dev/null || true
fi
# The step's own status, so that a scheduler (Slurm) records the job as failed or not.
exit "$code"
