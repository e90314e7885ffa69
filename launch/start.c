/* The `lockstep` command's first instructions: a small static program that blocks the stop signals
 * (SIGTERM, SIGINT, SIGUSR1, SIGUSR2), sets OMP_WAIT_POLICY=PASSIVE unless the user chose a policy, and
 * executes lockstep-main, the real program, next to it. Static, it runs no dynamic loader: from the
 * first instruction after launch a warning signal stays pending (execve keeps the signal mask and the
 * pending signals) until lockstep-main has installed its handlers (launch/main.cpp), instead of
 * killing the process with status 138 while the real program's libraries load. Setting
 * OMP_WAIT_POLICY here also spares lockstep-main its own re-execution (ops::ensure_passive_openmp). */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char** argv) {
  (void)argc;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGUSR1);
  sigaddset(&set, SIGUSR2);
  sigprocmask(SIG_BLOCK, &set, NULL);
  /* OpenMP's workers must not spin while OpenBLAS runs (core/ops.h, ensure_passive_openmp). */
  setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
  char path[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", path, sizeof path - 32);
  if (n <= 0) {
    fprintf(stderr, "lockstep: cannot find its own location (/proc/self/exe: %s)\n", strerror(errno));
    return 127;
  }
  path[n] = '\0';
  char* slash = strrchr(path, '/');
  strcpy(slash ? slash + 1 : path, "lockstep-main");
  execv(path, argv);
  fprintf(stderr, "lockstep: cannot run %s: %s\n", path, strerror(errno));
  return 127;
}
