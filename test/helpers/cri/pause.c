/*
 * A pod sandbox's init process, as the pause image's: sleeps until SIGTERM/SIGINT, reaps
 * orphans meanwhile. Compiled with `cc -static` into the local sandbox image (image.ts), since
 * no registry (registry.k8s.io/pause) is reachable from the tests.
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
  (void)sig;
  _exit(0);
}

static void on_child(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  if (getpid() != 1) return 1;
  signal(SIGINT, on_stop);
  signal(SIGTERM, on_stop);
  signal(SIGCHLD, on_child);
  for (;;) pause();
}
