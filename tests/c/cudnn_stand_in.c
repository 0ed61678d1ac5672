/* Stand-ins for cuDNN 9's shim and graph library, for tests/c/test_cudnn_probe.c. Built as the shim
 * (libcudnn.so.99, cudnn64_99.dll: a major no real cuDNN has, so none installed here is found in their
 * place), whose cudnnGetVersion loads the graph library by name only and, where it cannot, prints what
 * cuDNN 9 prints and aborts, as cuDNN 9's does (seen on Linux, and under Wine with the win_amd64
 * wheel's DLLs); with -DWV_STAND_IN_GRAPH, as the graph library (libcudnn_graph.so.99,
 * cudnn_graph64_99.dll). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _WIN32
#include <windows.h>
#define EXPORT __declspec(dllexport)
#else
#include <dlfcn.h>
#define EXPORT __attribute__((visibility("default")))
#endif

#ifdef WV_STAND_IN_GRAPH
EXPORT size_t stand_in_graph_version(void) { return 992801; }
#else
typedef size_t (*version_fn)(void);

EXPORT size_t cudnnGetVersion(void)
{
    version_fn version = NULL;
#ifdef _WIN32
    HMODULE graph = LoadLibraryA("cudnn_graph64_99.dll");
    if (graph) version = (version_fn)(void (*)(void))GetProcAddress(graph, "stand_in_graph_version");
#else
    void *graph = dlopen("libcudnn_graph.so.99", RTLD_LAZY | RTLD_LOCAL), *symbol;
    if (graph && (symbol = dlsym(graph, "stand_in_graph_version"))) memcpy(&version, &symbol, sizeof version);
#endif
    if (!version) {
        fprintf(stderr, "Invalid handle. Cannot load symbol cudnnGetVersion\n");
        abort();
    }
    return version();
}
#endif
