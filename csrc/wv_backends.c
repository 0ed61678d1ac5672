/* The op-name table and the "supports" query, both generated from WV_BACKEND_OPS. */
#include "wv_backend.h"

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

