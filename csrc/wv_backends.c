/* The backend registry and the op-name table, both generated from WV_BACKEND_OPS. */
#include "wv_backend.h"

#include <string.h>

static const char *const OP_NAMES[] = {
#define WV_OP_NAME(name, ret, args) #name,
    WV_BACKEND_OPS(WV_OP_NAME)
#undef WV_OP_NAME
};

int wv_backend_op_count(void) { return (int)(sizeof OP_NAMES / sizeof OP_NAMES[0]); }

const char *wv_backend_op_name(int i) { return i >= 0 && i < wv_backend_op_count() ? OP_NAMES[i] : NULL; }

int wv_backend_supports(const wv_backend *be, int i)
{
    int k = 0;
#define WV_OP_PRESENT(name, ret, args) \
    if (k++ == i) return be->name != NULL;
    WV_BACKEND_OPS(WV_OP_PRESENT)
#undef WV_OP_PRESENT
    return 0;
}

const wv_backend *wv_backend_find(const char *name)
{
    const wv_backend *cpu = wv_backend_cpu();
    if (name && strcmp(name, cpu->name) == 0) return cpu;
    return NULL;
}
