/*
 * weft's only native code: the few system calls Node has no binding for. setns(2) for the
 * calling thread; SO_PEERCRED of a unix socket (who is asking the CNI fast path); fstatfs(2)'s
 * f_type (is an open file a namespace); non-blocking flock(2) (host-local's IPAM lock);
 * fcntl(2)'s F_DUPFD (growing the file descriptor table ahead of a burst).
 * Plain N-API (no V8 headers), so one build works on every Node release and needs only a C
 * compiler plus the node-api-headers package. Typed wrappers: src/native/sys.ts.
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/vfs.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <node_api.h>

static napi_value throw_errno(napi_env env, int err, const char *syscall) {
  char code[32];
  const char *name = err == EBADF ? "EBADF" : err == EINVAL ? "EINVAL" : err == EPERM ? "EPERM" : err == ENOMEM ? "ENOMEM" : err == ENOTSOCK ? "ENOTSOCK" : err == EINTR ? "EINTR" : "EIO";
  strncpy(code, name, sizeof code - 1);
  code[sizeof code - 1] = 0;
  char msg[128];
  snprintf(msg, sizeof msg, "%s: %s", syscall, strerror(err));
  napi_throw_error(env, code, msg);
  return NULL;
}

/* setns(fd: number, nstype: number): void -- switches only the calling thread. */
static napi_value js_setns(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd = -1, nstype = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1) {
    napi_throw_type_error(env, NULL, "setns(fd, nstype) expects a file descriptor");
    return NULL;
  }
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok) {
    napi_throw_type_error(env, NULL, "setns: fd must be a number");
    return NULL;
  }
  if (argc > 1) napi_get_value_int32(env, argv[1], &nstype);
  if (setns(fd, nstype) != 0) return throw_errno(env, errno, "setns");
  return NULL;
}

/* The first argument as a file descriptor, or -1 after throwing. */
static int32_t fd_arg(napi_env env, napi_callback_info info, napi_value *argv, size_t *argc, const char *fn) {
  int32_t fd = -1;
  if (napi_get_cb_info(env, info, argc, argv, NULL, NULL) != napi_ok || *argc < 1 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s: expects a file descriptor", fn);
    napi_throw_type_error(env, NULL, msg);
    return -1;
  }
  return fd;
}

/* peerCred(fd: number): [pid, uid, gid] of the process at the other end of a unix socket. */
static napi_value js_peercred(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd = fd_arg(env, info, argv, &argc, "peerCred");
  if (fd < 0) return NULL;
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return throw_errno(env, errno, "getsockopt(SO_PEERCRED)");
  napi_value arr, v;
  napi_create_array_with_length(env, 3, &arr);
  napi_create_int64(env, cred.pid, &v);
  napi_set_element(env, arr, 0, v);
  napi_create_int64(env, cred.uid, &v);
  napi_set_element(env, arr, 1, v);
  napi_create_int64(env, cred.gid, &v);
  napi_set_element(env, arr, 2, v);
  return arr;
}

/* fsType(fd: number): number -- fstatfs(2)'s f_type (NSFS_MAGIC for a namespace file). */
static napi_value js_fstype(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd = fd_arg(env, info, argv, &argc, "fsType");
  if (fd < 0) return NULL;
  struct statfs st;
  if (fstatfs(fd, &st) != 0) return throw_errno(env, errno, "fstatfs");
  napi_value v;
  napi_create_double(env, (double)(unsigned long)st.f_type, &v);
  return v;
}

/* flockTry(fd: number, exclusive: boolean | undefined = unlock): boolean -- flock(2) with
 * LOCK_NB; false when another open file holds a conflicting lock. Never blocks. */
static napi_value js_flock(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd = fd_arg(env, info, argv, &argc, "flockTry");
  if (fd < 0) return NULL;
  int op = LOCK_UN;
  if (argc > 1) {
    napi_valuetype t;
    napi_typeof(env, argv[1], &t);
    if (t == napi_boolean) {
      bool ex = false;
      napi_get_value_bool(env, argv[1], &ex);
      op = (ex ? LOCK_EX : LOCK_SH) | LOCK_NB;
    }
  }
  napi_value v;
  for (;;) {
    if (flock(fd, op) == 0) break;
    if (errno == EINTR) continue;
    if (errno == EWOULDBLOCK) {
      napi_get_boolean(env, false, &v);
      return v;
    }
    return throw_errno(env, errno, "flock");
  }
  napi_get_boolean(env, true, &v);
  return v;
}

/* reserveFds(n: number): boolean -- makes the descriptor table hold n descriptors now, by
 * duplicating one to the lowest free number >= n-1 (F_DUPFD never replaces an open one) and
 * closing it again; false when the limit (RLIMIT_NOFILE) is below n. */
static napi_value js_reserve_fds(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  double d = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || napi_get_value_double(env, argv[0], &d) != napi_ok || !(d >= 1 && d <= 1 << 30)) {
    napi_throw_type_error(env, NULL, "reserveFds: expects a count from 1 to 2^30");
    return NULL;
  }
  int n = (int)d;
  napi_value v;
  int base = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (base < 0) {
    if (errno != EMFILE && errno != ENFILE) return throw_errno(env, errno, "open(/dev/null)");
    napi_get_boolean(env, false, &v); /* no descriptor left at all: nothing to grow with */
    return v;
  }
  int hi = fcntl(base, F_DUPFD_CLOEXEC, n - 1);
  int err = errno;
  if (hi >= 0 && hi != base) close(hi);
  close(base);
  if (hi < 0 && err != EMFILE && err != EINVAL) return throw_errno(env, err, "fcntl(F_DUPFD)");
  napi_get_boolean(env, hi >= 0, &v);
  return v;
}

NAPI_MODULE_INIT() {
  static const struct {
    const char *name;
    napi_callback cb;
  } fns[] = {{"setns", js_setns}, {"peerCred", js_peercred}, {"fsType", js_fstype}, {"flockTry", js_flock}, {"reserveFds", js_reserve_fds}};
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    napi_value fn;
    napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].cb, NULL, &fn);
    napi_set_named_property(env, exports, fns[i].name, fn);
  }
  return exports;
}
