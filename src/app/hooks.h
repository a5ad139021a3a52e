// Builds the inspection hooks the configuration asks for (issue 8) and
// registers their metrics.
#pragma once

#include "app/config.h"
#include "metrics/proxy_metrics.h"
#include "proxy/context.h"

#include <string>

namespace sightline::app {

// How many hook consumer threads `cfg` starts (each records metrics from its
// own shard).
unsigned hook_consumer_count(const Config& cfg);

// Opens key logs and creates the stream consumers; loudly logs what is on.
bool build_hooks(const Config& cfg, proxy::ProxyContext& ctx, std::string* error);

// Per-consumer metrics: before the registry is frozen.
void register_hook_metrics(proxy::ProxyContext& ctx, metrics::ProxyMetrics* m);
// Starts the consumer threads: after the registry is frozen.
void start_hooks(proxy::ProxyContext& ctx, metrics::ProxyMetrics* m);

}  // namespace sightline::app
