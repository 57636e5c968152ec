/*
 * weft's only native code: setns(2) for the calling thread.
 * Node has no binding for it. Plain N-API (no V8 headers), so one build works on every Node
 * release and needs only a C compiler plus the node-api-headers package.
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <node_api.h>

static napi_value throw_errno(napi_env env, int err, const char *syscall) {
  char code[32];
  const char *name = err == EBADF ? "EBADF" : err == EINVAL ? "EINVAL" : err == EPERM ? "EPERM" : err == ENOMEM ? "ENOMEM" : "EIO";
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

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "setns", NAPI_AUTO_LENGTH, js_setns, NULL, &fn);
  napi_set_named_property(env, exports, "setns", fn);
  return exports;
}
