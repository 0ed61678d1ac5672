/* The environment guard of the Python modules (wv_set_env_guard): each read of a WANVIDEO_* setting
 * holds the GIL, which os.environ's putenv holds too. Included by each extension module, which has
 * its own copy of wv_util.c. */
#ifndef WV_ENV_GIL_H
#define WV_ENV_GIL_H

#include <Python.h>

#include "wv_core.h"

static int wv_env_gil_enter(void) { return (int)PyGILState_Ensure(); }

static void wv_env_gil_leave(int token) { PyGILState_Release((PyGILState_STATE)token); }

static const wv_env_guard WV_ENV_GIL = {wv_env_gil_enter, wv_env_gil_leave};

#endif
