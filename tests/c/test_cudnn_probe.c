/* cuda/wv_cudnn_probe.h on stand-ins for cuDNN 9's shim and graph library (tests/c/cudnn_stand_in.c),
 * on Linux and on Windows (MinGW-w64, under Wine). tests/c/cudnn_probe.sh lays out their folders and
 * runs each case in a process of its own (a library once loaded stays loaded):
 *   test_cudnn_probe SHIM loads|refuses|unprobed [GRAPH]
 * loads: the probe lets cuDNN be called, and the call reaches the graph library;
 * refuses: the probe says why, naming the shim's folder and the graph library, and nothing calls cuDNN;
 * unprobed: cuDNN is called without asking (the control: the stand-in then aborts where its graph
 * library is off the search path, even beside it).
 * GRAPH: a graph library loaded first (as PyTorch's may be); the one beside the shim must then not be
 * loaded too. Prints "ok: ..." and exits 0 where the case went as expected. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* dladdr, RTLD_NOLOAD */
#endif
#include "wv_cudnn_probe.h"

#include <stdlib.h>

#define STAND_IN_MAJOR 99
#define STAND_IN_VERSION 992801
#ifdef _WIN32
#define STAND_IN_GRAPH "cudnn_graph64_99.dll"
#else
#define STAND_IN_GRAPH "libcudnn_graph.so.99"
#endif

typedef size_t (*version_fn)(void);

enum expectation { LOADS, REFUSES, UNPROBED, UNKNOWN };

#ifdef _WIN32
static void widen(const char *utf8, wchar_t *out, int out_chars)
{
    if (!MultiByteToWideChar(CP_UTF8, 0, utf8, -1, out, out_chars)) out[0] = 0;
}

static void *open_library(const char *path)
{
    wchar_t wide[4096];
    widen(path, wide, 4096);
    return (void *)LoadLibraryExW(wide, NULL, LOAD_WITH_ALTERED_SEARCH_PATH);
}

static int is_loaded(const char *path)
{
    wchar_t wide[4096];
    widen(path, wide, 4096);
    return GetModuleHandleW(wide) != NULL;
}

static version_fn function_named(void *library, const char *name)
{
    return (version_fn)(void (*)(void))GetProcAddress((HMODULE)library, name);
}
#else
static void *open_library(const char *path) { return dlopen(path, RTLD_NOW | RTLD_LOCAL); }

static int is_loaded(const char *path) { return dlopen(path, RTLD_LAZY | RTLD_LOCAL | RTLD_NOLOAD) != NULL; }

static version_fn function_named(void *library, const char *name)
{
    void *symbol = dlsym(library, name);
    version_fn function;
    memcpy(&function, &symbol, sizeof function);
    return function;
}
#endif

static enum expectation expectation_named(const char *word)
{
    if (!strcmp(word, "loads")) return LOADS;
    if (!strcmp(word, "refuses")) return REFUSES;
    if (!strcmp(word, "unprobed")) return UNPROBED;
    return UNKNOWN;
}

/* The graph library's path beside the shim at shim_path. */
static void graph_beside(const char *shim_path, char *out, size_t out_size)
{
    const char *slash = strrchr(shim_path, '/'), *backslash = strrchr(shim_path, '\\');
    const char *base = slash > backslash ? slash + 1 : backslash ? backslash + 1 : shim_path;
    snprintf(out, out_size, "%.*s%s", (int)(base - shim_path), shim_path, STAND_IN_GRAPH);
}

static int probe(version_fn version, enum expectation expect, const char *shim_path, const char *graph_first)
{
    char why[4096] = "", beside[4096];
    const void *address;
    int status, named;
    memcpy(&address, &version, sizeof address); /* the function's address, as the backend gives its cuDNN's */
    status = wv_cudnn_graph_loadable(address, STAND_IN_MAJOR, why, sizeof why);
    if (expect == REFUSES) {
        named = strstr(why, "alone") && strstr(why, STAND_IN_GRAPH) &&
                strstr(why, "so its first call would abort the process");
        printf("%s: %s\n", status == -1 && named ? "ok: refused" : "wrong: refused as", why);
        return status == -1 && named ? 0 : 1;
    }
    if (status != 0) {
        printf("wrong: refused: %s\n", why);
        return 1;
    }
    graph_beside(shim_path, beside, sizeof beside);
    if (graph_first && is_loaded(beside)) {
        printf("wrong: %s was loaded beside %s, loaded first\n", beside, graph_first);
        return 1;
    }
    return 0;
}

static int run(int argc, char **argv)
{
    enum expectation expect = argc == 3 || argc == 4 ? expectation_named(argv[2]) : UNKNOWN;
    void *shim;
    version_fn version = NULL;
    size_t got;
    if (expect == UNKNOWN) {
        fprintf(stderr, "usage: test_cudnn_probe SHIM loads|refuses|unprobed [GRAPH]\n");
        return 2;
    }
    if (argc == 4 && !open_library(argv[3])) {
        printf("wrong: the stand-in graph library %s does not load\n", argv[3]);
        return 1;
    }
    shim = open_library(argv[1]);
    if (shim) version = function_named(shim, "cudnnGetVersion");
    if (!version) {
        printf("wrong: the stand-in shim %s does not load\n", argv[1]);
        return 1;
    }
    if (expect != UNPROBED) {
        int failed = probe(version, expect, argv[1], argc == 4 ? argv[3] : NULL);
        if (failed || expect == REFUSES) return failed;
    }
    got = version();
    printf("%s: version %zu\n", got == STAND_IN_VERSION ? "ok: called" : "wrong: called", got);
    return got == STAND_IN_VERSION ? 0 : 1;
}

#ifdef _WIN32
/* wmain (-municode): the arguments as the command line has them, whatever the code page, as UTF-8 */
int wmain(int argc, wchar_t **wide_argv)
{
    static char text[4][4096];
    char *argv[4] = {NULL, NULL, NULL, NULL};
    for (int i = 0; i < argc && i < 4; i++) {
        if (!WideCharToMultiByte(CP_UTF8, 0, wide_argv[i], -1, text[i], 4096, NULL, NULL)) text[i][0] = 0;
        argv[i] = text[i];
    }
    return run(argc, argv);
}
#else
int main(int argc, char **argv) { return run(argc, argv); }
#endif
