/* Errors, the environment, dtypes, and strided host views. */
#include "wv_core.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _WIN32
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#endif

wv_status wv_fail(wv_error *err, wv_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

wv_status wv_fail_in(wv_error *err, wv_status st, const char *what)
{
    char msg[sizeof err->msg];
    size_t head, tail;
    if (!st || !err || !strncmp(err->msg, WV_INTERNAL, strlen(WV_INTERNAL))) return st; /* a bug's: opens so */
    snprintf(msg, sizeof msg, "%s: ", what);
    head = strlen(msg);
    tail = strlen(err->msg);
    if (tail > sizeof msg - 1 - head) tail = sizeof msg - 1 - head; /* cut at the end, as wv_fail cuts */
    memcpy(msg + head, err->msg, tail);
    msg[head + tail] = '\0';
    memcpy(err->msg, msg, sizeof msg);
    return st;
}

const char *wv_size_text(char *buf, size_t size, size_t bytes)
{
    static const char *const units[] = {"KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    int u = -1;
    while (u < 3 && v >= 1024.0) {
        v /= 1024.0;
        u++;
    }
    if (u < 0)
        snprintf(buf, size, "%zu byte%s", bytes, bytes == 1 ? "" : "s");
    else
        snprintf(buf, size, u >= 2 ? "%.2f %s" : "%.1f %s", v, units[u]);
    return buf;
}

const char *wv_bytes_text(char *buf, size_t size, size_t bytes)
{
    char unit[WV_BYTES_TEXT];
    if (bytes < 1024)
        wv_size_text(buf, size, bytes);
    else
        snprintf(buf, size, "%zu bytes (%s)", bytes, wv_size_text(unit, sizeof unit, bytes));
    return buf;
}

static const wv_env_guard *g_env_guard;

void wv_set_env_guard(const wv_env_guard *guard) { g_env_guard = guard; }

#ifdef _WIN32
/* The process environment's value of name (its UTF-16, as UTF-8: the ANSI code page would turn
 * characters outside it into '?'), malloc'ed; NULL where it is not set or memory runs out. */
static char *windows_env_utf8(const char *name, int *set)
{
    wchar_t wname[128], *wide = NULL;
    char *utf8 = NULL;
    DWORD n, got;
    int bytes;
    *set = 0;
    if (!MultiByteToWideChar(CP_UTF8, 0, name, -1, wname, 128)) return NULL;
    n = GetEnvironmentVariableW(wname, NULL, 0); /* its length with the terminator; 0: not set */
    if (n == 0) return NULL;
    *set = 1;
    if (!(wide = (wchar_t *)malloc(n * sizeof(wchar_t)))) return NULL;
    got = GetEnvironmentVariableW(wname, wide, n);
    wide[got < n ? got : 0] = L'\0'; /* changed since it was measured: read as empty */
    bytes = WideCharToMultiByte(CP_UTF8, 0, wide, -1, NULL, 0, NULL, NULL);
    if (bytes > 0 && (utf8 = (char *)malloc((size_t)bytes)) != NULL)
        WideCharToMultiByte(CP_UTF8, 0, wide, -1, utf8, bytes, NULL, NULL);
    free(wide);
    return utf8;
}
#endif

static int read_env(const char *name, char *buf, size_t size)
{
#ifdef _WIN32
    int set;
    char *v = windows_env_utf8(name, &set);
    snprintf(buf, size, "%s", v ? v : "");
    free(v);
    return set;
#else
    const char *v = getenv(name);
    if (!v) return 0;
    snprintf(buf, size, "%s", v);
    return 1;
#endif
}

int wv_getenv(const char *name, char *buf, size_t size)
{
    const wv_env_guard *guard = g_env_guard;
    int token = guard ? guard->enter() : 0, set = read_env(name, buf, size);
    if (guard) guard->leave(token);
    return set;
}

int wv_parse_count(const char *s, long lo, long hi, long *n)
{
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < lo || v > hi) return 0;
    *n = v;
    return 1;
}

static const struct {
    const char *name, *precision;
    size_t bytes;
    const char *typestr, *native;
} DTYPES[] = {
#define WV_DTYPE_INFO(id, name, precision, bytes, typestr, native) {name, precision, bytes, typestr, native},
    WV_DTYPES(WV_DTYPE_INFO)
#undef WV_DTYPE_INFO
};

const char *wv_dtype_name(wv_dtype dt) { return (unsigned)dt < WV_DTYPE_COUNT ? DTYPES[dt].name : "?"; }

const char *wv_dtype_precision(wv_dtype dt) { return (unsigned)dt < WV_DTYPE_COUNT ? DTYPES[dt].precision : "?"; }

size_t wv_dtype_size(wv_dtype dt) { return (unsigned)dt < WV_DTYPE_COUNT ? DTYPES[dt].bytes : 0; }

int wv_dtype_from_typestr(const char *typestr, wv_dtype *dt)
{
    for (int i = 0; i < WV_DTYPE_COUNT; i++)
        if (!strcmp(typestr, DTYPES[i].typestr) || !strcmp(typestr, DTYPES[i].native)) {
            *dt = (wv_dtype)i;
            return 1;
        }
    return 0;
}

int wv_dtype_from_name(const char *name, wv_dtype *dt)
{
    for (int i = 0; i < WV_DTYPE_COUNT; i++)
        if (!strcmp(name, DTYPES[i].name) || !strcmp(name, DTYPES[i].precision)) {
            *dt = (wv_dtype)i;
            return 1;
        }
    return 0;
}

wv_status wv_fail_nonfinite_output(wv_error *err, wv_dtype act)
{
    if (act == WV_F16)
        return wv_fail(err, WV_ERR_BACKEND,
                       "the decode produced NaN or Inf: an activation or a weight went past float16's range "
                       "(65504); decode with precision='bf16' or 'fp32'");
    return wv_fail(err, WV_ERR_BACKEND,
                   "the decode produced NaN or Inf: an activation went past %s's range (3.4e38), from latents or "
                   "weights far larger than a Wan 2.1 VAE's (a damaged checkpoint?)",
                   wv_dtype_name(act));
}

int64_t wv_view_numel(const wv_view *v)
{
    int64_t n = 1;
    for (int d = 0; d < v->ndim; d++) n *= v->shape[d];
    return n;
}

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    float f;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); /* inf / nan */
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: normalize */
        int e = -1;
        do {
            e++;
            man <<= 1;
        } while (!(man & 0x400u));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    memcpy(&f, &bits, 4);
    return f;
}

static float bf16_to_float(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float wv_elem_to_f32(const void *ptr, wv_dtype dt)
{
    const char *p = (const char *)ptr;
    uint16_t h;
    float f;
    switch (dt) {
    case WV_F32: memcpy(&f, p, 4); return f;
    case WV_F16: memcpy(&h, p, 2); return half_to_float(h);
    case WV_BF16: memcpy(&h, p, 2); return bf16_to_float(h);
    }
    return 0.0f;
}

/* One innermost row of a view: `inner` elements `stride` bytes apart from `p`, the row-major
 * position of its first element `done`, its index in the outer dimensions idx[0 .. ndim - 2]. */
typedef int (*row_fn)(void *user, const wv_view *v, const char *p, int64_t inner, int64_t stride, int64_t done,
                      const int64_t *idx);

/* Calls fn on every row of v in row-major order (a 0-d view: one row of one element) until it
 * returns nonzero; returns that, or 0. */
static int walk_rows(const wv_view *v, row_fn fn, void *user)
{
    int64_t idx[WV_MAX_DIMS] = {0};
    int64_t n = wv_view_numel(v), last = v->ndim - 1;
    int64_t inner = v->ndim ? v->shape[last] : 1, stride = v->ndim ? v->strides[last] : 0;
    for (int64_t done = 0; done < n; done += inner) {
        const char *p = (const char *)v->data;
        int rc;
        for (int d = 0; d < last; d++) p += idx[d] * v->strides[d];
        if ((rc = fn(user, v, p, inner, stride, done, idx))) return rc;
        for (int d = (int)last - 1; d >= 0; d--) {
            if (++idx[d] < v->shape[d]) break;
            idx[d] = 0;
        }
    }
    return 0;
}

static int row_to_f32(void *dst_, const wv_view *v, const char *p, int64_t inner, int64_t stride, int64_t done,
                      const int64_t *idx)
{
    float *dst = (float *)dst_ + done;
    (void)idx;
    if (v->dtype == WV_F32 && stride == 4)
        memcpy(dst, p, (size_t)inner * 4);
    else
        for (int64_t i = 0; i < inner; i++) dst[i] = wv_elem_to_f32(p + i * stride, v->dtype);
    return 0;
}

void wv_view_to_f32(const wv_view *v, float *dst) { walk_rows(v, row_to_f32, dst); }

static int row_find_nonfinite(void *index_, const wv_view *v, const char *p, int64_t inner, int64_t stride,
                              int64_t done, const int64_t *idx)
{
    int64_t *index = (int64_t *)index_;
    (void)done;
    for (int64_t i = 0; i < inner; i++) {
        float f = wv_elem_to_f32(p + i * stride, v->dtype);
        if (f - f != 0.0f) { /* NaN or +-Inf */
            for (int d = 0; d < v->ndim - 1; d++) index[d] = idx[d];
            if (v->ndim) index[v->ndim - 1] = i;
            return 1;
        }
    }
    return 0;
}

int wv_view_find_nonfinite(const wv_view *v, int64_t *index) { return walk_rows(v, row_find_nonfinite, index); }
