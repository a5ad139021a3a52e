#include "policy/auto_bypass.h"

#include <doctest/doctest.h>

#include <string>

using sightline::policy::AutoBypass;
using namespace std::chrono_literals;

TEST_CASE("auto-bypass: one or two failures do not bypass, the third within the window does") {
  AutoBypass ab(1h, 1000, 3, 5min);
  auto t0 = AutoBypass::Clock::now();
  auto f = ab.record_failure("10.0.0.1", "pinned.example", t0);
  CHECK(f.count == 1);
  CHECK_FALSE(f.bypassed);
  CHECK_FALSE(ab.contains("10.0.0.1", "pinned.example", t0));
  f = ab.record_failure("10.0.0.1", "pinned.example", t0 + 1min);
  CHECK(f.count == 2);
  CHECK_FALSE(f.bypassed);
  CHECK_FALSE(ab.contains("10.0.0.1", "pinned.example", t0 + 1min));
  CHECK(ab.suspects() == 1);
  CHECK(ab.size() == 0);
  f = ab.record_failure("10.0.0.1", "pinned.example", t0 + 2min);
  CHECK(f.count == 3);
  CHECK(f.bypassed);
  CHECK(ab.contains("10.0.0.1", "pinned.example", t0 + 2min));
  CHECK(ab.size() == 1);
  CHECK(ab.suspects() == 0);  // the count starts again after the pair is added
  CHECK(ab.activations() == 1);
  // Bypassed for the TTL from the third failure, then inspected again.
  CHECK(ab.contains("10.0.0.1", "pinned.example", t0 + 2min + 59min));
  CHECK_FALSE(ab.contains("10.0.0.1", "pinned.example", t0 + 2min + 61min));
}

TEST_CASE("auto-bypass: failures are counted per (client, name) pair") {
  AutoBypass ab(1h, 1000, 2, 5min);
  auto t0 = AutoBypass::Clock::now();
  CHECK_FALSE(ab.record_failure("10.0.0.1", "a.example", t0).bypassed);
  CHECK_FALSE(ab.record_failure("10.0.0.2", "a.example", t0).bypassed);
  CHECK_FALSE(ab.record_failure("10.0.0.1", "b.example", t0).bypassed);
  CHECK(ab.size() == 0);
  CHECK(ab.suspects() == 3);
  CHECK(ab.record_failure("10.0.0.2", "a.example", t0 + 1s).bypassed);
  CHECK(ab.contains("10.0.0.2", "a.example", t0 + 1s));
  CHECK_FALSE(ab.contains("10.0.0.1", "a.example", t0 + 1s));
  CHECK_FALSE(ab.contains("10.0.0.1", "b.example", t0 + 1s));
}

TEST_CASE("auto-bypass: the window slides; failures older than it no longer count") {
  AutoBypass ab(1h, 1000, 3, 5min);
  auto t0 = AutoBypass::Clock::now();
  CHECK(ab.record_failure("10.0.0.1", "x.example", t0).count == 1);
  CHECK(ab.record_failure("10.0.0.1", "x.example", t0 + 4min).count == 2);
  // t0 has left the window: only 4 min and 6 min count.
  auto f = ab.record_failure("10.0.0.1", "x.example", t0 + 6min);
  CHECK(f.count == 2);
  CHECK_FALSE(f.bypassed);
  // At 8 min the window reaches back to 3 min: 4 and 6 still count, so
  // this is the third.
  f = ab.record_failure("10.0.0.1", "x.example", t0 + 8min);
  CHECK(f.count == 3);
  CHECK(f.bypassed);

  // Exactly `window` old: out (strictly newer than now - window counts).
  CHECK(ab.record_failure("10.0.0.9", "x.example", t0).count == 1);
  CHECK(ab.record_failure("10.0.0.9", "x.example", t0 + 5min).count == 1);

  // Far apart failures never add up.
  for (int i = 0; i < 10; ++i) {
    auto g = ab.record_failure("10.0.0.2", "x.example", t0 + i * 6min);
    CHECK(g.count == 1);
    CHECK_FALSE(g.bypassed);
  }
  CHECK_FALSE(ab.contains("10.0.0.2", "x.example", t0 + 60min));
}

TEST_CASE("auto-bypass: threshold 1 bypasses at the first failure (the old behaviour)") {
  AutoBypass ab(10s, 1000, 1, 5min);
  auto t0 = AutoBypass::Clock::now();
  auto f = ab.record_failure("10.0.0.1", "pinned.example", t0);
  CHECK(f.count == 1);
  CHECK(f.bypassed);
  CHECK(ab.contains("10.0.0.1", "pinned.example", t0));
  CHECK(ab.suspects() == 0);
  // Already bypassed: counted, but not added (and logged) again.
  CHECK_FALSE(ab.record_failure("10.0.0.1", "pinned.example", t0 + 1s).bypassed);
  // Expired: learned again.
  CHECK(ab.record_failure("10.0.0.1", "pinned.example", t0 + 11s).bypassed);
  CHECK(ab.activations() == 2);
}

TEST_CASE("auto-bypass: thresholds are clamped to 1..kMaxThreshold") {
  CHECK(AutoBypass(1h, 100, 0).threshold() == 1);
  CHECK(AutoBypass(1h, 100, 1000).threshold() == AutoBypass::kMaxThreshold);
  CHECK(AutoBypass(1h, 100).threshold() == 3);
}

TEST_CASE("auto-bypass: the failure table stays bounded") {
  AutoBypass ab(1h, 32, 3, 5min);  // 2 pairs per shard
  auto t0 = AutoBypass::Clock::now();
  for (int i = 0; i < 5000; ++i)
    CHECK_FALSE(ab.record_failure("10.0.1." + std::to_string(i), "flood.example", t0).bypassed);
  CHECK(ab.suspects() <= 32);
  CHECK(ab.size() == 0);
  // A pair seen recently still reaches the threshold when nothing evicts it
  // in between; entries that left the window make room first.
  AutoBypass ab2(1h, 32, 2, 5min);
  for (int i = 0; i < 32; ++i) ab2.record_failure("10.0.2." + std::to_string(i), "old.example", t0);
  CHECK_FALSE(ab2.record_failure("10.0.0.1", "new.example", t0 + 10min).bypassed);
  CHECK(ab2.record_failure("10.0.0.1", "new.example", t0 + 11min).bypassed);
  CHECK(ab2.suspects() <= 32);
}
