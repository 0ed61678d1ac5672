/* Stand-in for the toolkit header: see cuda_on_cpu.h. */
#include "cuda_on_cpu.h"
