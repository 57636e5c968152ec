/*
 * cnitime: runs a CNI plugin the way a runtime does and times it from fork to exit, so the
 * bench process's own spawn cost (a fork of a large Node process plus nsenter) is not counted.
 *
 *   cnitime NETNS PLUGIN CONFIG
 *       one call: environment = ours, stdin = CONFIG, stdout/stderr passed through;
 *       writes "<ms> <exit code>\n" to fd 3.
 *   cnitime NETNS PLUGIN CONFIG OUTDIR CALLS
 *       CALLS has one line per call, "K=V<TAB>K=V..." added to our environment; all calls are
 *       started at once; call i writes OUTDIR/i.out and OUTDIR/i.err; fd 3 gets one line per
 *       call "<i> <ms> <exit code>" and a last line "wall <ms>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void die(const char *what) {
  fprintf(stderr, "cnitime: %s: %s\n", what, strerror(errno));
  exit(127);
}

static pid_t start(const char *plugin, const char *config, char **env, const char *out, const char *err) {
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid > 0) return pid;
  int in = open(config, O_RDONLY);
  if (in < 0 || dup2(in, 0) < 0) die("open config");
  if (out) {
    int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644), e = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0) die("open output");
  }
  close(3);
  char *argv[] = {(char *)plugin, NULL};
  execve(plugin, argv, env);
  die("exec plugin");
  return -1;
}

/* environ plus the tab-separated K=V pairs of `line` (which is modified in place). */
static char **env_with(char *line) {
  size_t n = 0, extra = 1;
  while (environ[n]) n++;
  for (char *p = line; *p; p++) extra += *p == '\t';
  char **env = calloc(n + extra + 1, sizeof *env);
  size_t k = 0;
  for (char *tok = strtok(line, "\t\n"); tok; tok = strtok(NULL, "\t\n")) env[k++] = tok;
  for (size_t i = 0; i < n; i++) {
    size_t klen = strcspn(environ[i], "=");
    int overridden = 0;
    for (size_t j = 0; j < k && !overridden; j++) overridden = strncmp(env[j], environ[i], klen + 1) == 0;
    if (!overridden) env[k++] = environ[i];
  }
  return env;
}

int main(int argc, char **argv) {
  if (argc != 4 && argc != 6) {
    fprintf(stderr, "usage: cnitime NETNS PLUGIN CONFIG [OUTDIR CALLS]\n");
    return 127;
  }
  int ns = open(argv[1], O_RDONLY);
  if (ns < 0 || setns(ns, CLONE_NEWNET) < 0) die("enter netns");
  close(ns);
  FILE *report = fdopen(3, "w");
  if (!report) die("fd 3");
  if (argc == 4) {
    double t0 = now_ms();
    pid_t pid = start(argv[2], argv[3], environ, NULL, NULL);
    int st;
    if (waitpid(pid, &st, 0) < 0) die("waitpid");
    fprintf(report, "%.3f %d\n", now_ms() - t0, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    return 0;
  }
  FILE *calls = fopen(argv[5], "r");
  if (!calls) die("open calls");
  enum { MAX = 1024 };
  static pid_t pids[MAX];
  static double t0s[MAX];
  static char *lines[MAX];
  int n = 0;
  char *line = NULL;
  size_t cap = 0;
  while (n < MAX && getline(&line, &cap, calls) > 0) {
    lines[n++] = line;
    line = NULL;
    cap = 0;
  }
  char **envs[MAX];
  for (int i = 0; i < n; i++) envs[i] = env_with(lines[i]);
  double wall0 = now_ms();
  for (int i = 0; i < n; i++) {
    char out[4096], err[4096];
    snprintf(out, sizeof out, "%s/%d.out", argv[4], i);
    snprintf(err, sizeof err, "%s/%d.err", argv[4], i);
    t0s[i] = now_ms();
    pids[i] = start(argv[2], argv[3], envs[i], out, err);
  }
  for (int left = n; left > 0; left--) {
    int st;
    pid_t pid = wait(&st);
    if (pid < 0) die("wait");
    double t = now_ms();
    for (int i = 0; i < n; i++) {
      if (pids[i] == pid) fprintf(report, "%d %.3f %d\n", i, t - t0s[i], WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    }
  }
  fprintf(report, "wall %.3f\n", now_ms() - wall0);
  return 0;
}
