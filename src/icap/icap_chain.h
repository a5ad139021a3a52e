// Several ICAP services for one method, run one after another on a message
// (issue 8: "one or more services"; policy picks which ones apply). Each
// service sees the message as the previous one left it, so a URL filter can
// run before a DLP scanner and an antivirus after both.
#pragma once

#include "icap/icap_client.h"

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace sightline::icap {

// One service of a chain, as configured.
struct ChainStep {
  std::size_t service = 0;  // index into the configured services
  std::string name;
  bool fail_closed = true;
};

// The service behind a step on this thread's loop; null when unavailable
// (the worker is shutting down).
using ServiceLookup = std::function<IcapService*(std::size_t service)>;
// Called with each service's own answer, for metrics and logs.
using StepReport = std::function<void(const ChainStep&, const Result&)>;

// Runs a message through `steps` in order and calls `done` once with the
// combined verdict:
//  - `respond` from any service ends the chain with that answer;
//  - `error` from a fail-closed service ends it with that error (the caller
//    fails closed); from a fail-open service the error is reported, skipped,
//    and the combined result has `failed_open` set;
//  - otherwise `modified` (head and body as the last service left them) when
//    any service changed the message, else `unchanged`.
// `latency` covers the whole chain. `done` runs later from the loop, except
// when the first service is unavailable (then at once, like an error).
// `response` is set for RESPMOD (then `request` is the context).
void run_chain(std::vector<ChainStep> steps, const ServiceLookup& lookup, StepReport report,
               exchange::Head request, std::optional<exchange::Head> response, std::string body,
               Callback done);

}  // namespace sightline::icap
