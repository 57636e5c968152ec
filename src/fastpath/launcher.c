/*
 * weft's CNI fast-path launcher. The runtime execs this small static program instead of the
 * Node CNI binary; it forwards the request (environment + stdin) over a unix socket to weftd,
 * which runs the same CNI code in its already warm process, and prints the reply. Starting Node
 * costs more than the reference plugins' whole ADD; this costs about a millisecond.
 *
 * When the socket is absent, refuses, or the daemon does not acknowledge in time, it execs the
 * standalone CNI binary with the same environment and stdin, so pods still work with weftd down.
 *
 * Protocol (little-endian u32 lengths), see protocol.ts:
 *   -> "WFT1" u32 envLen env(K=V\0...) u32 stdinLen stdin
 *   <- 'A'        daemon has the whole request and has not started it
 *   -> 'G'        go: only now may the daemon act (a launcher that timed out never sends it,
 *                 so the daemon and the fallback never both run the request)
 *   <- u32 exitCode u32 outLen out u32 errLen err
 *
 * The request also carries WEFT_LAUNCHER_NETNS=<inode of our network namespace>: a daemon in
 * another namespace (several lab nodes on one machine share the file system, hence the socket
 * path) closes without acknowledging, and we fall back.
 *
 * Socket: the network config's "fastpathSocket" string, else /run/weft/cni.sock.
 * Fallback binary: WEFT_FALLBACK compiled in, else weft-standalone beside this program, else
 * weft beside this program when that is not this program itself. "Beside" means beside the
 * real file (/proc/self/exe), so an install through a symlink (/opt/cni/bin/weft -> ...) works.
 * No fallback binary, or one that cannot be exec'd, is a broken install: a permanent error
 * (code 999), not "try again later" (11) forever.
 *
 * Environment: only CNI_* and PATH are forwarded (to weftd and to the fallback). The runtime's
 * own environment (containerd's, kubelet's) is none of the plugin's business.
 *
 * Deadlines: the acknowledgement within ACK_TIMEOUT_MS, the reply within REPLY_TIMEOUT_MS (90 s),
 * below kubelet's default --runtime-request-timeout of 2 min, so the runtime hears an answer
 * (11 for an ADD: it DELs and retries; weftd runs that DEL after the ADD it still finishes).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/weft/cni.sock"
/* Generous: a busy daemon (a burst of 100 ADDs on 2 cores) is still far faster than the
 * fallback, which starts one Node process per call; only a wedged daemon should hit this. */
#define ACK_TIMEOUT_MS 10000
#define REPLY_TIMEOUT_MS 90000
/* protocol.ts MAX_STDIN: MAX_REQUEST (1 MiB) - MAX_ENV (64 KiB) - 12 */
#define MAX_STDIN ((1 << 20) - (64 << 10) - 12)
#define MAX_REPLY (16 << 20)
#define MAX_ENV_VARS 256

extern char **environ;

struct buf {
  char *p;
  size_t len, cap;
};

static void put(struct buf *b, const void *data, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      perror("weft launcher: out of memory");
      exit(1);
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, data, n);
  b->len += n;
}

static void put32(struct buf *b, uint32_t v) {
  unsigned char le[4] = {v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >> 24) & 0xff};
  put(b, le, 4);
}

static uint32_t get32(const unsigned char *p) {
  return p[0] | (p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/* Waits until fd is ready for `events` or the deadline passes. */
static int wait_fd(int fd, short events, long long deadline) {
  for (;;) {
    long long left = deadline - now_ms();
    if (left <= 0) return -1;
    struct pollfd p = {fd, events, 0};
    int r = poll(&p, 1, (int)(left > INT_MAX ? INT_MAX : left));
    if (r > 0) return 0;
    if (r < 0 && errno != EINTR) return -1;
  }
}

static int write_all(int fd, const char *p, size_t n, long long deadline) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w > 0) {
      p += w;
      n -= (size_t)w;
    } else if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (wait_fd(fd, POLLOUT, deadline) < 0) return -1;
    } else {
      return -1;
    }
  }
  return 0;
}

/* Reads exactly n bytes; -1 on EOF, error or deadline. */
static int read_all(int fd, void *dst, size_t n, long long deadline) {
  char *p = dst;
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r > 0) {
      p += r;
      n -= (size_t)r;
    } else if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (wait_fd(fd, POLLIN, deadline) < 0) return -1;
    } else {
      return -1;
    }
  }
  return 0;
}

/* The "fastpathSocket" string of the JSON config, if any (a plain string without escapes). */
static void socket_path(const struct buf *in, char *out, size_t cap) {
  static const char key[] = "\"fastpathSocket\"";
  snprintf(out, cap, "%s", DEFAULT_SOCKET);
  const char *end = in->p + in->len;
  const char *k = in->len ? memmem(in->p, in->len, key, sizeof key - 1) : NULL;
  if (!k) return;
  const char *p = k + sizeof key - 1;
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  if (p >= end || *p++ != ':') return;
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  if (p >= end || *p++ != '"') return;
  const char *q = p;
  while (q < end && *q != '"' && *q != '\\') q++;
  if (q >= end || *q != '"' || (size_t)(q - p) >= cap || q == p) return;
  memcpy(out, p, (size_t)(q - p));
  out[q - p] = 0;
}

static const char *command(void) {
  const char *c = getenv("CNI_COMMAND");
  return c ? c : "";
}

/* Prints a CNI error (code 11: the runtime retries) and exits. */
static void fail_retry(const char *msg) {
  printf("{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"%s\"}\n", msg);
  exit(1);
}

/* Prints a permanent CNI error (retrying cannot help) and exits. */
static void fail_perm(int code, const char *msg) {
  printf("{\"cniVersion\":\"1.0.0\",\"code\":%d,\"msg\":\"%s\"}\n", code, msg);
  exit(1);
}

/* The environment forwarded: CNI_* and PATH only, NULL-terminated. */
static char *fwd_env[MAX_ENV_VARS + 1];

static void filter_env(void) {
  size_t n = 0;
  for (char **e = environ; *e && n < MAX_ENV_VARS; e++) {
    if (strncmp(*e, "CNI_", 4) == 0 || strncmp(*e, "PATH=", 5) == 0) fwd_env[n++] = *e;
  }
  fwd_env[n] = NULL;
}

/* Execs the standalone plugin with our environment and `in` as its stdin. Never returns. */
static void fallback(const struct buf *in, const char *why) {
  char self[PATH_MAX], dir[PATH_MAX], cand[PATH_MAX + 32];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) fail_perm(999, "weft launcher: cannot find its own path (/proc/self/exe)");
  self[n] = 0;
  snprintf(dir, sizeof dir, "%s", self);
  char *slash = strrchr(dir, '/');
  if (slash) *slash = 0;
  const char *target = NULL;
#ifdef WEFT_FALLBACK
  if (access(WEFT_FALLBACK, X_OK) == 0) target = WEFT_FALLBACK;
#endif
  struct stat me, it;
  if (!target) {
    snprintf(cand, sizeof cand, "%s/weft-standalone", dir);
    if (access(cand, X_OK) == 0) target = cand;
  }
  if (!target) {
    snprintf(cand, sizeof cand, "%s/weft", dir);
    if (access(cand, X_OK) == 0 && stat(self, &me) == 0 && stat(cand, &it) == 0 && !(me.st_dev == it.st_dev && me.st_ino == it.st_ino)) target = cand;
  }
  if (!target) fail_perm(999, "weft launcher: weftd is not serving and no standalone weft binary was found beside the launcher (a broken install)");
  if (getenv("WEFT_LAUNCHER_DEBUG")) fprintf(stderr, "weft launcher: falling back to %s: %s\n", target, why);
  int fd = memfd_create("weft-stdin", MFD_CLOEXEC);
  if (fd < 0 || (in->len && write(fd, in->p, in->len) != (ssize_t)in->len) || lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, 0) < 0) {
    fail_retry("weft launcher: cannot pass stdin to the standalone binary");
  }
  char *argv[] = {(char *)target, NULL};
  execve(target, argv, fwd_env);
  fail_perm(999, "weft launcher: cannot exec the standalone weft binary (a broken install)");
}

int main(void) {
  filter_env();
  struct buf in = {0};
  char chunk[65536];
  for (;;) {
    ssize_t r = read(0, chunk, sizeof chunk);
    if (r > 0) put(&in, chunk, (size_t)r);
    else if (r == 0) break;
    else if (errno != EINTR) fail_retry("weft launcher: cannot read stdin");
    if (in.len > MAX_STDIN) fail_perm(7, "weft launcher: network configuration larger than 960 KiB");
  }

  char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
  socket_path(&in, path, sizeof path);
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
  if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) fallback(&in, "cannot connect");

  struct buf req = {0};
  put(&req, "WFT1", 4);
  struct buf env = {0};
  for (char **e = fwd_env; *e; e++) put(&env, *e, strlen(*e) + 1);
  struct stat netns;
  if (stat("/proc/self/ns/net", &netns) == 0) {
    char kv[64];
    int n = snprintf(kv, sizeof kv, "WEFT_LAUNCHER_NETNS=%llu", (unsigned long long)netns.st_ino);
    put(&env, kv, (size_t)n + 1);
  }
  put32(&req, (uint32_t)env.len);
  put(&req, env.p, env.len);
  put32(&req, (uint32_t)in.len);
  put(&req, in.p, in.len);

  long long deadline = now_ms() + ACK_TIMEOUT_MS;
  char ack;
  if (write_all(s, req.p, req.len, deadline) < 0 || read_all(s, &ack, 1, deadline) < 0 || ack != 'A') {
    close(s);
    fallback(&in, "no acknowledgement");
  }
  if (write_all(s, "G", 1, deadline) < 0) {
    close(s);
    fallback(&in, "connection lost before go");
  }

  /* From here the daemon owns the request. If it dies, an ADD may be half done: report a
   * retryable error (the runtime DELs, then retries); anything else is idempotent: fall back. */
  deadline = now_ms() + REPLY_TIMEOUT_MS;
  unsigned char hdr[8];
  if (read_all(s, hdr, 8, deadline) < 0) {
    close(s);
    if (strcmp(command(), "ADD") == 0) fail_retry("weftd stopped while handling ADD");
    fallback(&in, "daemon stopped mid-request");
  }
  uint32_t code = get32(hdr), outLen = get32(hdr + 4);
  if (outLen > MAX_REPLY) fail_retry("weftd reply too large");
  struct buf out = {0};
  for (uint32_t left = outLen; left > 0;) {
    size_t n = left < sizeof chunk ? left : sizeof chunk;
    if (read_all(s, chunk, n, deadline) < 0) fail_retry("weftd reply truncated");
    put(&out, chunk, n);
    left -= (uint32_t)n;
  }
  unsigned char elen[4];
  if (read_all(s, elen, 4, deadline) < 0) fail_retry("weftd reply truncated");
  struct buf err = {0};
  if (get32(elen) > MAX_REPLY) fail_retry("weftd reply too large");
  for (uint32_t left = get32(elen); left > 0;) {
    size_t n = left < sizeof chunk ? left : sizeof chunk;
    if (read_all(s, chunk, n, deadline) < 0) fail_retry("weftd reply truncated");
    put(&err, chunk, n);
    left -= (uint32_t)n;
  }
  if (err.len) (void)!write(2, err.p, err.len);
  if (out.len && write_all(1, out.p, out.len, deadline) < 0) return 1;
  return (int)(code > 255 ? 1 : code);
}
