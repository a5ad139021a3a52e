#include "icap/icap_chain.h"

#include "http/h1_parser.h"

#include <algorithm>
#include <memory>

namespace sightline::icap {

namespace {

// A message passed on to the next service must be framed by its body as it
// is now, not as the previous service's answer said.
void reframe(exchange::Head& head, const std::string& body, bool has_body) {
  std::erase_if(head.headers, [](const exchange::Header& h) {
    return http::iequals(h.name, "content-length") || http::iequals(h.name, "transfer-encoding");
  });
  if (has_body || !body.empty()) head.headers.push_back({"Content-Length", std::to_string(body.size())});
}

struct ChainRun : std::enable_shared_from_this<ChainRun> {
  std::vector<ChainStep> steps;
  ServiceLookup lookup;
  StepReport report;
  exchange::Head request;
  std::optional<exchange::Head> response;
  std::string body;
  Callback done;
  std::size_t next = 0;
  bool modified = false, failed_open = false, has_body = false;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  Result last;  // the last service's answer (ISTag, ICAP fields)

  void step() {
    if (next == steps.size()) return finish();
    const ChainStep& s = steps[next];
    IcapService* svc = lookup ? lookup(s.service) : nullptr;
    auto self = shared_from_this();
    auto on_result = [self](Result r) { self->answered(std::move(r)); };
    if (!svc) {
      Result r;
      r.error = "ICAP service not available";
      return on_result(std::move(r));
    }
    if (response) svc->respmod(request, *response, body, std::move(on_result));
    else svc->reqmod(request, body, std::move(on_result));
  }

  void answered(Result r) {
    const ChainStep& s = steps[next++];
    if (report) report(s, r);
    using K = Result::Kind;
    switch (r.kind) {
      case K::unchanged:
        break;
      case K::modified:
        modified = true;
        has_body = r.has_body;
        body = std::move(r.body);
        (response ? *response : request) = std::move(r.head);
        reframe(response ? *response : request, body, has_body);
        break;
      case K::respond:
      case K::error:
        if (r.kind == K::error && !s.fail_closed) {
          failed_open = true;
          break;
        }
        if (r.kind == K::error && steps.size() > 1) r.error = "service " + s.name + ": " + r.error;
        r.failed_open = failed_open;
        r.latency = std::chrono::steady_clock::now() - start;
        return deliver(std::move(r));
    }
    last = std::move(r);
    step();
  }

  void finish() {
    Result out = std::move(last);
    out.kind = modified ? Result::Kind::modified : Result::Kind::unchanged;
    out.error.clear();
    if (modified) {
      out.head = std::move(response ? *response : request);
      out.body = std::move(body);
      out.has_body = has_body;
    }
    out.failed_open = failed_open;
    out.latency = std::chrono::steady_clock::now() - start;
    deliver(std::move(out));
  }

  void deliver(Result r) {
    Callback cb = std::move(done);  // the callback may end the relay, and with it this run
    cb(std::move(r));
  }
};

}  // namespace

void run_chain(std::vector<ChainStep> steps, const ServiceLookup& lookup, StepReport report,
               exchange::Head request, std::optional<exchange::Head> response, std::string body,
               Callback done) {
  auto run = std::make_shared<ChainRun>();
  run->steps = std::move(steps);
  run->lookup = lookup;
  run->report = std::move(report);
  run->request = std::move(request);
  run->response = std::move(response);
  run->body = std::move(body);
  run->done = std::move(done);
  run->step();
}

}  // namespace sightline::icap
