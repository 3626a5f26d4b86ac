# agentflow step wrapper (POSIX sh: works in images with no bash).
# Usage: sh wrapper.sh WORKDIR [MARKER [ENV]]
# Runs run.sh (next to this file) with bash where there is one, else sh, in its own process
# group, stdin from /dev/null, every byte of output to output.log and to the terminal.
# Records pid (= the process group to kill), started_at (its time is the file's), and
# exit_code (written last, atomically: its presence means the step is over, its processes
# gone and output.log complete, or output_incomplete says what was lost), then writes the
# step's id to the run's wake FIFO. ENV is a script of `export` lines with the step's
# environment, sourced first (never on a command line).
# Every program run here is a process a step pays for: builtins where they do.
where() {
  case $0 in
    /*) d=${0%/*} ;;
    *) d=$(cd "$(dirname "$0")" && pwd) ;;
  esac
}
where
# The step's environment comes first: what it names `d`, `m` or `shell` is this script's
# own from here on (as it was when such a variable came in the environment).
if [ -n "${3:-}" ]; then
  if [ -r "$3" ]; then
    . "$3"
    where
  else
    # Held by the orchestrator that started the window, which died before it was read:
    # the attempt never began, and is lost as if tmux had gone (hangup), not failed.
    echo "agentflow: the step's environment ($3) cannot be read" | tee -a "$d/output.log"
    : >"$d/hangup"
    echo 129 >"$d/exit_code.tmp"; mv "$d/exit_code.tmp" "$d/exit_code"; exit 129
  fi
fi
# Every process of the step carries AGENTFLOW_PROC=MARKER in its environment (given to
# run.sh alone, not to this shell or tee): it survives setsid and a daemon's double fork,
# which a process group does not, so the step's leftovers can be found and killed. The
# host gives the marker (it looks for the same one); the step's folder by default.
m=${2:-$d/}
cd "$1" || { echo "agentflow: cannot enter $1" | tee -a "$d/output.log"; echo 127 >"$d/exit_code.tmp"; mv "$d/exit_code.tmp" "$d/exit_code"; exit 127; }
shell=sh
command -v bash >/dev/null 2>&1 && shell=bash
# What an earlier run of this wrapper left (the host's new attempt starts in a clean folder,
# so there is usually nothing, and no rm to run).
for af_f in exit_code exit_code.tmp hangup output_incomplete output_incomplete.tmp; do
  if [ -e "$d/$af_f" ] || [ -h "$d/$af_f" ]; then
    rm -f "$d/exit_code" "$d/exit_code.tmp" "$d/hangup" "$d/output_incomplete" "$d/output_incomplete.tmp"
    break
  fi
done
# The exit code's file is made now, while there is room: at the end it is written in place
# (no new block) and renamed, so that even a disk the step filled up records it. So is the
# file that records output lost on the way to output.log (a full disk).
echo "    " >"$d/exit_code.tmp"
echo "    " >"$d/output_incomplete.tmp"
# The host made the FIFO with the folder (no mkfifo to run); made here when it did not.
if [ -h "$d/fifo" ] || ! [ -p "$d/fifo" ] || ! [ -w "$d/fifo" ]; then
  rm -f "$d/fifo"
  mkfifo "$d/fifo"
fi
# The log's readers carry AGENTFLOW_LOG=MARKER: if a process that is not the step's (it
# cleared its environment) holds the output open after the step, the host's last kill
# ends them, so that the step ends.
if [ -n "${AGENTFLOW_SECRETS:-}" ]; then
  # Mask the values of the named secrets (read from the environment, never from argv)
  # before a byte reaches the log or the screen.
  AGENTFLOW_LOG=$m awk 'BEGIN { n = split(ENVIRON["AGENTFLOW_SECRETS"], names, " ") }
    { line = $0
      for (i = 1; i <= n; i++) {
        s = ENVIRON[names[i]]; if (s == "") continue
        out = ""; rest = line
        while ((j = index(rest, s)) > 0) { out = out substr(rest, 1, j - 1) "***"; rest = substr(rest, j + length(s)) }
        line = out rest
      }
      print line; fflush() }' <"$d/fifo" | AGENTFLOW_LOG=$m tee -a "$d/output.log" &
else
  AGENTFLOW_LOG=$m tee -a "$d/output.log" <"$d/fifo" &
fi
tee_pid=$!
: >"$d/started_at"
# The step gets a process group of its own, which a timeout or stop kills whole: the
# shell's job control on a terminal (a job keeps Ctrl-C, which a plain background command
# would ignore), else setsid (a background child is no group leader, so setsid does not
# fork, and $! leads the new group).
if [ -t 1 ] || ! command -v setsid >/dev/null 2>&1; then
  set -m
  AGENTFLOW_PROC=$m $shell "$d/run.sh" >"$d/fifo" 2>&1 </dev/null &
  pid=$!
  set +m
else
  AGENTFLOW_PROC=$m setsid $shell "$d/run.sh" >"$d/fifo" 2>&1 </dev/null &
  pid=$!
fi
echo "$pid" >"$d/pid"
# Ctrl-C or a hangup in the window is passed on to the step.
# ($sig: a trapped signal came, which makes `wait` return early.)
trap 'sig=1; kill -INT -"$pid" 2>/dev/null' INT
# A hangup is the window going away (a killed tmux server): the step is lost, not failed.
trap 'sig=1; hup=1; kill -HUP -"$pid" 2>/dev/null' HUP
trap 'sig=1; kill -TERM -"$pid" 2>/dev/null' TERM
while :; do
  wait "$pid"
  code=$?
  # wait returns early (>128) when a trapped signal arrives; the step may still run.
  kill -0 "$pid" 2>/dev/null || break
done
# The step's processes that are still there (one grep over /proc: a fork per process
# would cost every step): $left, their pids.
marked() {
  left=
  for f in $(LC_ALL=C grep -lszxF "AGENTFLOW_PROC=$m" /proc/[0-9]*/environ 2>/dev/null); do
    f=${f#/proc/}
    [ "${f%/environ}" = "$$" ] || left="$left ${f%/environ}"
  done
  [ -n "$left" ]
}
# What the step left running goes with it, in its group or out of it (setsid, a daemon):
# TERM, and KILL to what is left after a short grace (use `service: true` for servers).
kill -TERM -"$pid" 2>/dev/null
if marked; then
  kill -TERM $left 2>/dev/null
  n=0
  while [ "$n" -lt 20 ] && marked; do sleep 0.1 2>/dev/null || sleep 1; n=$((n + 1)); done
  n=0
  while [ "$n" -lt 20 ] && marked; do kill -KILL $left 2>/dev/null; n=$((n + 1)); done
fi
while :; do
  sig=
  wait "$tee_pid"
  tee_code=$?
  [ -n "$sig" ] && [ "$tee_code" -gt 128 ] && kill -0 "$tee_pid" 2>/dev/null || break
done
# tee goes on to the screen after a write to output.log failed, and says so by its status:
# the loss is recorded in the file reserved for it (a signal's status: it was killed).
if [ "$tee_code" -ne 0 ]; then
  printf '%4d\n' "$tee_code" 1<>"$d/output_incomplete.tmp"
  mv "$d/output_incomplete.tmp" "$d/output_incomplete"
fi
# (The FIFO and output_incomplete.tmp stay: the host removes them, with no rm to run.)
[ -z "${hup:-}" ] || : >"$d/hangup"
printf '%4d\n' "$code" 1<>"$d/exit_code.tmp"
mv "$d/exit_code.tmp" "$d/exit_code"
# Wake the orchestrator at once. Opened read-write, a FIFO never blocks, even with nobody
# reading (the orchestrator may be dead; then the line is simply dropped).
wake="$d/../.wake"
if [ -p "$wake" ]; then
  { echo "${d##*/}" >&3; } 3<>"$wake" 2>/dev/null || true
fi
# The window's title says the end is reported (tmux.REPORTED_TITLE): tmux then skips the
# wake-up it sends when a window dies, which is for a wrapper that died before reporting.
[ -t 1 ] && printf '\033]2;agentflow-reported\033\\'
# The step's own status, so that a scheduler (Slurm) records the job as failed or not.
exit "$code"
