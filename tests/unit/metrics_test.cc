#include "metrics/registry.h"

#include <doctest/doctest.h>

#include <thread>
#include <vector>

using namespace sightline::metrics;

TEST_CASE("per-thread slots are summed at scrape time") {
  Registry r(3);
  auto c = r.counter("t_requests_total", "Requests.", {{"kind", "a"}});
  auto g = r.gauge("t_open", "Open things.");
  auto h = r.histogram("t_latency_seconds", "Latency.", {}, {0.001, 0.01, 0.1});
  r.callback_gauge("t_cb", "A callback.", {{"x", "1"}}, [] { return 42.0; });
  r.freeze();
  std::vector<std::thread> threads;
  for (unsigned s = 0; s < 3; ++s)
    threads.emplace_back([&, s] {
      for (int i = 0; i < 10000; ++i) {
        r.inc(s, c);
        r.add(s, g, 1);
        r.add(s, g, -1);
      }
      r.add(s, g, static_cast<std::int64_t>(s));
      r.observe(s, h, 0.005);
    });
  for (auto& t : threads) t.join();
  CHECK(r.counter_value(c) == 30000);
  CHECK(r.gauge_value(g) == 0 + 1 + 2);
  CHECK(r.histogram_count(h) == 3);
  std::string text = r.scrape();
  CHECK(text.find("# TYPE t_requests_total counter") != std::string::npos);
  CHECK(text.find("t_requests_total{kind=\"a\"} 30000") != std::string::npos);
  CHECK(text.find("t_open 3") != std::string::npos);
  CHECK(text.find("t_latency_seconds_bucket{le=\"0.001\"} 0") != std::string::npos);
  CHECK(text.find("t_latency_seconds_bucket{le=\"0.01\"} 3") != std::string::npos);
  CHECK(text.find("t_latency_seconds_bucket{le=\"+Inf\"} 3") != std::string::npos);
  CHECK(text.find("t_latency_seconds_count 3") != std::string::npos);
  CHECK(text.find("t_cb{x=\"1\"} 42") != std::string::npos);
}

TEST_CASE("series of one name share a family, in registration order") {
  Registry r(1);
  r.counter("t_x_total", "X.", {{"k", "1"}});
  r.counter("t_x_total", "X.", {{"k", "2"}});
  r.freeze();
  std::string text = r.scrape();
  auto first = text.find("# HELP t_x_total");
  CHECK(first != std::string::npos);
  CHECK(text.find("# HELP t_x_total", first + 1) == std::string::npos);
  CHECK(text.find("t_x_total{k=\"1\"} 0") < text.find("t_x_total{k=\"2\"} 0"));
}
