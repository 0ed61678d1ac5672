/* Shared by the core's files (planner, driver, model): the arena's named buffers and helpers. */
#ifndef WV_INTERNAL_H
#define WV_INTERNAL_H

#include "wv_backend.h"

/* X(id, phase, description). Phases: the trunk output lives for the whole sequence; trunk work
 * and tile work are each alive during their phase (they share memory unless the plan streams).
 * The causal caches follow these, one buffer per cache slot, in the phase of their block. */
#define WV_ARENA_BUFFERS(X)                                                              \
    X(TRUNK_OUT, PHASE_KEEP, "trunk output [frames][h*w][4 dim] (1 frame: streamed; none: kept on the host)") \
    X(WORKSPACE, PHASE_KEEP, "backend workspace (convolution algorithms, GEMMs)")      \
    X(WEIGHT_SCRATCH, PHASE_KEEP, "a causal conv's weights, taps reordered by the backend") \
    X(TRUNK_X, PHASE_TRUNK, "trunk activations [P0][C]")                            \
    X(TRUNK_Y, PHASE_TRUNK, "trunk activations [P0][C]")                            \
    X(TRUNK_T, PHASE_TRUNK, "trunk conv input [P0][C]")                             \
    X(ATTN_IN, PHASE_TRUNK, "attention norm [h*w][C]")                                  \
    X(ATTN_QKV, PHASE_TRUNK, "attention qkv [h*w][3C]")                                 \
    X(ATTN_OUT, PHASE_TRUNK, "attention output [h*w][C]")                               \
    X(ATTN_SCORES, PHASE_TRUNK, "attention scores [rows][h*w]")                         \
    X(TILE_SCRATCH, PHASE_TILE, "tile activations: x, y, t of each segment, t under the next")          \
    X(OUTPUT_STAGING, PHASE_TILE, "output on its way to the host [copies][step frames][core][3] items")

enum { PHASE_KEEP, PHASE_TRUNK, PHASE_TILE };

enum {
#define WV_BUF_ENUM(id, phase, desc) WV_BUF_##id,
    WV_ARENA_BUFFERS(WV_BUF_ENUM)
#undef WV_BUF_ENUM
    WV_BUF_CACHE0 /* + cache slot */
};

#define WV_ARENA_ALIGN 256

static inline size_t wv_align_up(size_t n) { return (n + WV_ARENA_ALIGN - 1) / WV_ARENA_ALIGN * WV_ARENA_ALIGN; }

/* Frames causal conv cv's cache holds (see wv_ring): a ring of kt with a slot for the new one, else
 * the kt - 1 previous ones. */
static inline int wv_cache_frames(const wv_backend *be, const wv_conv *cv)
{
    return be->cache_layout(cv) == WV_CACHE_RING ? cv->kt : cv->kt - 1;
}

/* Steps (*b, *c) to the next conv of blocks before `end`; 0 when there is none. Every conv of blocks
 * [first, end): for (int b = first, c = -1; wv_next_conv(m, end, &b, &c);) ... m->blocks[b].conv[c] */
static inline int wv_next_conv(const wv_model *m, int end, int *b, int *c)
{
    for (;;) {
        if (++*c == WV_BLOCK_MAX_CONVS) {
            *c = 0;
            ++*b;
        }
        if (*b >= end) return 0;
        if (m->blocks[*b].has_conv[*c]) return 1;
    }
}

/* A resample conv's 3x3 weights [cout][cin][3][3] as its sub-pixel phases' 2x2 kernels
 * [4][cout][cin][2][2], phase (a, b) at 2 a + b (see wv_conv). */
void wv_subpixel_weight(const float *w3, int cout, int cin, float *w2);

/* Segment index of a tile-part block (an upsample's: the segment it starts), -1 for trunk blocks. */
int wv_block_segment(const wv_plan *p, const wv_model *m, int block);

/* Grid of tile t's region in segment s. */
wv_grid wv_tile_grid(const wv_plan *p, int t, int s);

#endif
