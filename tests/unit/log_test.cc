#include "core/log.h"

#include <doctest/doctest.h>

#include <charconv>

#include <cmath>

#include <random>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace sightline;

namespace {

std::string escaped(std::string_view s) {
  std::string out;
  log::append_json_escaped(out, s);
  return out;
}

}  // namespace

TEST_CASE("JSON escaping keeps valid UTF-8 and replaces everything else") {
  CHECK(escaped("plain text") == "plain text");
  CHECK(escaped("a\"b\\c") == "a\\\"b\\\\c");
  CHECK(escaped("\n\r\t\b\f") == "\\n\\r\\t\\b\\f");
  CHECK(escaped(std::string_view("\x01\x1f\0", 3)) == "\\u0001\\u001f\\u0000");
  CHECK(escaped("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x94\x92") == "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x94\x92");
  // Lone continuation byte, truncated sequence, overlong '/', a surrogate, past U+10FFFF.
  CHECK(escaped("x\x80y") == "x\xEF\xBF\xBDy");
  CHECK(escaped("x\xe2\x82") == "x\xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK(escaped("\xc0\xaf") == "\xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK(escaped("\xed\xa0\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK(escaped("\xf4\x90\x80\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  // Whatever the bytes, the result parses as a JSON string.
  std::string all;
  for (int c = 0; c < 256; ++c) all += static_cast<char>(c);
  auto parsed = nlohmann::json::parse("\"" + escaped(all) + "\"", nullptr, false);
  CHECK_FALSE(parsed.is_discarded());
}

TEST_CASE("three-decimal numbers match an exact conversion") {
  auto fixed3 = [](double v) {
    std::string out;
    log::append_fixed3(out, v);
    return out;
  };
  CHECK(fixed3(1.5) == "1.500");
  CHECK(fixed3(-1) == "-1.000");
  CHECK(fixed3(0) == "0.000");
  CHECK(fixed3(0.0004) == "0.000");
  CHECK(fixed3(0.0006) == "0.001");
  CHECK(fixed3(-0.25) == "-0.250");
  CHECK(fixed3(123456.789) == "123456.789");
  CHECK(fixed3(std::nan("")) == "null");
  CHECK(fixed3(1e300).substr(0, 4) == "1000");
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> dist(-1e6, 1e6);
  for (int i = 0; i < 100000; ++i) {
    double v = dist(rng) / static_cast<double>(1 + i % 1000);
    double scaled = v * 1000.0;
    if (std::fabs(scaled - std::floor(scaled) - 0.5) < 1e-6) continue;  // a tie: either is right
    char buf[64];
    auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed, 3);
    std::string exact(buf, r.ptr);
    if (exact == "-0.000") exact = "0.000";
    REQUIRE_MESSAGE(fixed3(v) == exact, v);
  }
}

TEST_CASE("lines from many threads reach the file whole and parse as JSON") {
  char path[] = "/tmp/sightline-log-test-XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  ::close(fd);
  log::Options opts;
  opts.file = path;
  opts.level = log::Level::info;
  std::string error;
  REQUIRE(log::start(opts, &error));
  constexpr int kThreads = 4, kLines = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([t] {
      for (int i = 0; i < kLines; ++i)
        log::emit(log::Line(log::Level::info, "test")
                                .num("thread", t)
                                .num("i", i)
                                .str("name", "bad\xff\"name")
                                .fixed3("ms", 1.5)
                                .boolean("flag", true));
      log::emit(log::Level::debug, {{"event", "hidden"}});  // below the level
      log::emit(log::Level::warn, {{"event", "tree"}, {"n", t}});
    });
  for (auto& th : threads) th.join();
  log::stop();

  std::ifstream in(path);
  std::string text;
  int lines = 0, trees = 0;
  std::vector<int> next(kThreads, 0);
  while (std::getline(in, text)) {
    auto j = nlohmann::json::parse(text);
    CHECK(j.contains("ts"));
    CHECK(j["event"] != "hidden");
    if (j["event"] == "tree") {
      CHECK(j["level"] == "warn");
      ++trees;
      continue;
    }
    CHECK(j["level"] == "info");
    CHECK(j["name"] == "bad\xEF\xBF\xBD\"name");
    CHECK(j["ms"] == 1.5);
    CHECK(j["flag"] == true);
    int t = j["thread"];
    CHECK(j["i"] == next[t]);  // one thread's lines keep their order
    ++next[t];
    ++lines;
  }
  CHECK(lines + static_cast<int>(log::dropped_lines()) == kThreads * kLines);
  CHECK(log::dropped_lines() == 0);
  CHECK(trees == kThreads);
  std::remove(path);
}

TEST_CASE("a line reaches the file while the logger runs, batch after batch") {
  char path[] = "/tmp/sightline-log-live-XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  ::close(fd);
  log::Options opts;
  opts.file = path;
  std::string error;
  REQUIRE(log::start(opts, &error));
  // Each line must show up without stop() flushing it: a writer that missed
  // a wake-up would leave it queued.
  for (int i = 0; i < 20; ++i) {
    log::emit(log::Line(log::Level::info, "live").num("i", i));
    bool seen = false;
    for (int tries = 0; tries < 1000 && !seen; ++tries) {
      std::ifstream in(path);
      std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      seen = text.find("\"i\":" + std::to_string(i) + "}") != std::string::npos;
      if (!seen) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    CHECK_MESSAGE(seen, "line " << i << " not written within 10 s");
  }
  log::stop();
  std::remove(path);
}
