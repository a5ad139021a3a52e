// The process: builds the shared proxy context from the configuration, starts
// the workers, and waits for a stop signal on the main thread's own loop.
#pragma once

#include "app/config.h"

namespace sightline::app {

// Returns the process exit code.
int run_server(const Config& cfg);

}  // namespace sightline::app
