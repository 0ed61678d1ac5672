/* Whether cuDNN 9 can load its graph sub-library, asked before any cuDNN call.
 *
 * cuDNN 9's main library (libcudnn.so.9, cudnn64_9.dll) is a shim: its first call loads the graph
 * library (libcudnn_graph.so.9, cudnn_graph64_9.dll) and, where that fails, prints "Invalid handle.
 * Cannot load symbol ..." and aborts the process: a ComfyUI server with it. Seen on Linux and, with
 * the win_amd64 wheel's DLLs, under Wine. The shim looks for it by name only: through its RUNPATH
 * ($ORIGIN) on Linux, through the DLL search path (the program's folder, the current folder, PATH,
 * not the shim's own folder) on Windows. So the graph library is loaded here first: from beside the
 * shim (one installation's libraries, whatever the search path holds), else by name as the shim
 * would. Loaded, it stays, and the shim's own load finds it (a library of that name is loaded
 * already); one loaded before (PyTorch's) is left to be the one found, not joined by a second copy.
 * Where neither loads, nothing may call cuDNN, and `why` says what is wrong.
 * Only the graph library: without it even cudnnCreate aborts, while a function of the other sub-libraries
 * the backend calls (ops: tensor and filter descriptors; cnn: convolutions) whose library cannot load
 * returns CUDNN_STATUS_NOT_SUPPORTED_SUBLIBRARY_UNAVAILABLE, a decode's error (9.28, Linux and Wine).
 *
 * Header only: the CUDA backend includes it (C++, nvcc's host compiler: g++ or MSVC), and so does
 * tests/c/test_cudnn_probe.c (C, Linux and Windows), which runs it on stand-ins for cuDNN's two
 * libraries. On glibc, dladdr needs _GNU_SOURCE defined before the first #include (g++ defines it). */
#ifndef WV_CUDNN_PROBE_H
#define WV_CUDNN_PROBE_H

#include <stdio.h>
#include <string.h>
#ifdef _WIN32
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#ifndef NOMINMAX
#define NOMINMAX /* the CUDA backend's min() is CUDA's, not a macro of windows.h */
#endif
#include <windows.h>
#else
#include <dlfcn.h>
#endif

/* -1, with why: which cuDNN, which of its libraries, the loader's words. */
static inline int wv_probe_refuse(char *why, size_t why_size, const char *shim, const char *graph, const char *error)
{
    snprintf(why, why_size, "cuDNN (%s) cannot load its sub-library %s (%s), so its first call would abort the "
             "process; reinstall cuDNN (its sub-libraries lie beside it)", shim, graph, error);
    return -1;
}

#ifdef _WIN32
/* UTF-16 `text` as UTF-8 into out (Python decodes the message with the file system's encoding, UTF-8). */
static inline void wv_probe_utf8(const wchar_t *text, char *out, int out_size)
{
    if (!WideCharToMultiByte(CP_UTF8, 0, text, -1, out, out_size, NULL, NULL)) snprintf(out, out_size, "?");
}

/* Windows' words for error `code`, as UTF-8 without the line break. */
static inline void wv_probe_error_text(DWORD code, char *out, int out_size)
{
    wchar_t text[512];
    DWORD n = FormatMessageW(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, NULL, code, 0, text,
                             512, NULL);
    while (n > 0 && (text[n - 1] == L'\r' || text[n - 1] == L'\n' || text[n - 1] == L' ')) n--;
    text[n] = 0;
    if (n > 0)
        wv_probe_utf8(text, out, out_size);
    else
        snprintf(out, out_size, "error %lu", (unsigned long)code);
}
#endif

/* 0 where cuDNN may be called (its graph library is loaded now, or the cuDNN linked is not the shim:
 * a stand-in); else -1 and why. cudnn_function: a function of the cuDNN library linked (Linux finds
 * the shim's file by it; Windows by its name cudnn64_<major>.dll, as MSVC's &function is the import
 * thunk in the caller's own module). */
static inline int wv_cudnn_graph_loadable(const void *cudnn_function, int cudnn_major, char *why, size_t why_size)
{
#ifdef _WIN32
    enum { PATH_CHARS = 4096 };
    char name[64], shim_utf8[3 * PATH_CHARS], error_text[1024];
    wchar_t shim_name[64], graph_name[64], path[PATH_CHARS];
    HMODULE shim;
    DWORD length, error;
    wchar_t *base;
    (void)cudnn_function;
    snprintf(name, sizeof name, "cudnn64_%d.dll", cudnn_major);
    MultiByteToWideChar(CP_UTF8, 0, name, -1, shim_name, 64);
    snprintf(name, sizeof name, "cudnn_graph64_%d.dll", cudnn_major);
    MultiByteToWideChar(CP_UTF8, 0, name, -1, graph_name, 64);
    shim = GetModuleHandleW(shim_name);
    if (!shim || GetModuleHandleW(graph_name)) return 0; /* loaded already: the shim's load finds that one */
    length = GetModuleFileNameW(shim, path, PATH_CHARS);
    if (length == 0 || length >= PATH_CHARS) return 0; /* a path Windows cannot give: the shim's own load decides */
    base = wcsrchr(path, L'\\');
    base = base ? base + 1 : path;
    wv_probe_utf8(path, shim_utf8, (int)sizeof shim_utf8);
    error = ERROR_FILENAME_EXCED_RANGE;
    if ((size_t)(base - path) + wcslen(graph_name) < PATH_CHARS) {
        memcpy(base, graph_name, (wcslen(graph_name) + 1) * sizeof *base);
        if (LoadLibraryExW(path, NULL, LOAD_WITH_ALTERED_SEARCH_PATH)) return 0;
        error = GetLastError(); /* from the shim's folder: what is wrong where the library should be */
    }
    if (LoadLibraryW(graph_name)) return 0;
    wv_probe_error_text(error, error_text, (int)sizeof error_text);
    return wv_probe_refuse(why, why_size, shim_utf8, name, error_text);
#else
    Dl_info shim;
    char name[64], beside[4096], error[1024];
    const char *base, *said;
    if (!dladdr(cudnn_function, &shim) || !shim.dli_fname) return 0;
    base = strrchr(shim.dli_fname, '/');
    base = base ? base + 1 : shim.dli_fname;
    if (strncmp(base, "libcudnn.so", strlen("libcudnn.so")) != 0) return 0;
    snprintf(name, sizeof name, "libcudnn_graph.so.%d", cudnn_major);
    if (dlopen(name, RTLD_LAZY | RTLD_LOCAL | RTLD_NOLOAD)) return 0; /* loaded already: the shim's load finds it */
    snprintf(beside, sizeof beside, "%.*s%s", (int)(base - shim.dli_fname), shim.dli_fname, name);
    if (dlopen(beside, RTLD_LAZY | RTLD_LOCAL)) return 0;
    said = dlerror(); /* from the shim's folder: what is wrong where the library should be */
    snprintf(error, sizeof error, "%s", said ? said : "not loadable");
    if (dlopen(name, RTLD_LAZY | RTLD_LOCAL)) return 0;
    return wv_probe_refuse(why, why_size, shim.dli_fname, name, error);
#endif
}

#endif
