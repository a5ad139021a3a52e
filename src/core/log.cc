#include "core/log.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace sightline::log {
namespace {

struct ThreadQueue {
  std::mutex mu;  // shared only between its owning thread and the writer
  std::string text;  // whole lines, each ending in '\n'
  std::size_t lines = 0;
};

struct State {
  std::mutex registry_mu;  // taken once per thread, at its first line
  std::vector<std::shared_ptr<ThreadQueue>> queues;
  // Wake-ups: taken by a thread only when its queue goes from empty to
  // non-empty (once per batch), so workers rarely meet here.
  std::mutex wake_mu;
  std::condition_variable wake_cv;
  bool wake_pending = false;
  std::atomic<bool> running{false};
  std::atomic<bool> stopping{false};
  std::atomic<std::uint64_t> dropped{0};
  std::atomic<int> level{static_cast<int>(Level::info)};
  std::size_t queue_lines = 65536;
  int fd = STDERR_FILENO;
  std::thread writer;
};

State& state() {
  static State s;
  return s;
}

// After a wake-up the writer waits this long so that one write system call
// carries a batch of lines: a busy worker then wakes it a few hundred times a
// second instead of once per line.
constexpr auto kBatchDelay = std::chrono::milliseconds(5);

void write_all(int fd, std::string_view data) {
  const char* p = data.data();
  std::size_t left = data.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // nowhere left to report a logging failure
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

ThreadQueue& my_queue() {
  thread_local std::shared_ptr<ThreadQueue> q;
  if (!q) {
    q = std::make_shared<ThreadQueue>();
    State& s = state();
    std::lock_guard lock(s.registry_mu);
    s.queues.push_back(q);
  }
  return *q;
}

void drain_once() {
  State& s = state();
  std::vector<std::shared_ptr<ThreadQueue>> queues;
  {
    std::lock_guard lock(s.registry_mu);
    queues = s.queues;
  }
  std::string taken;
  for (auto& q : queues) {
    {
      std::lock_guard lock(q->mu);
      // Swapping hands the queue an empty string with the capacity of the
      // last batch: steady state allocates nothing.
      taken.swap(q->text);
      q->lines = 0;
    }
    if (!taken.empty()) write_all(s.fd, taken);
    taken.clear();
  }
}

void wake_writer() {
  State& s = state();
  {
    std::lock_guard lock(s.wake_mu);
    s.wake_pending = true;
  }
  s.wake_cv.notify_one();
}

void writer_main() {
  State& s = state();
  // The timeout is a safety net only: a wake-up is never needed for
  // correctness, so no line can wait longer than this.
  constexpr auto kMaxWait = std::chrono::milliseconds(250);
  for (;;) {
    bool stopping;
    {
      std::unique_lock lock(s.wake_mu);
      s.wake_cv.wait_for(lock, kMaxWait, [&] {
        return s.wake_pending || s.stopping.load(std::memory_order_acquire);
      });
      s.wake_pending = false;
      stopping = s.stopping.load(std::memory_order_acquire);
    }
    if (stopping) break;
    std::this_thread::sleep_for(kBatchDelay);
    drain_once();
  }
  drain_once();
}

std::string_view level_name(Level l) {
  switch (l) {
    case Level::debug: return "debug";
    case Level::info: return "info";
    case Level::warn: return "warn";
    case Level::error: return "error";
  }
  return "info";
}

// "YYYY-MM-DDTHH:MM:SS.mmmZ"; the part up to the seconds is formatted once
// per second per thread.
void append_timestamp(std::string& out) {
  thread_local std::time_t cached_secs = -1;
  thread_local char cached[32];
  auto now = std::chrono::system_clock::now();
  auto secs = std::chrono::system_clock::to_time_t(now);
  if (secs != cached_secs) {
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char buf[96];  // sized for any int values, keeps -Wformat-truncation quiet
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    std::memcpy(cached, buf, 19);
    cached[19] = '\0';
    cached_secs = secs;
  }
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  char frac[6] = {'.', static_cast<char>('0' + ms / 100), static_cast<char>('0' + ms / 10 % 10),
                  static_cast<char>('0' + ms % 10), 'Z', '\0'};
  out.append(cached, 19);
  out.append(frac, 5);
}

void begin_line(std::string& out, Level level) {
  out.reserve(512);  // an exchange line is about 400 bytes: no regrowth
  out += "{\"ts\":\"";
  append_timestamp(out);
  out += "\",\"level\":\"";
  out += level_name(level);
  out += '"';
}

void queue_line(std::string& text) {
  State& s = state();
  text += '\n';
  if (!s.running.load(std::memory_order_acquire)) {
    write_all(s.fd, text);
    return;
  }
  ThreadQueue& q = my_queue();
  bool was_empty;
  {
    std::lock_guard lock(q.mu);
    if (q.lines >= s.queue_lines) {
      s.dropped.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    was_empty = q.text.empty();
    q.text += text;
    ++q.lines;
  }
  // Only the first line of a batch wakes the writer; it takes the rest along.
  if (was_empty) wake_writer();
}

// Length of the valid UTF-8 sequence starting at p (1–4), or 0 if invalid.
std::size_t utf8_sequence(const unsigned char* p, std::size_t left) {
  unsigned char c = p[0];
  std::size_t n;
  std::uint32_t cp;
  if (c >= 0xC2 && c <= 0xDF) { n = 2; cp = c & 0x1F; }
  else if (c >= 0xE0 && c <= 0xEF) { n = 3; cp = c & 0x0F; }
  else if (c >= 0xF0 && c <= 0xF4) { n = 4; cp = c & 0x07; }
  else return 0;
  if (left < n) return 0;
  for (std::size_t i = 1; i < n; ++i) {
    if ((p[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (p[i] & 0x3F);
  }
  // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
      (cp >= 0xD800 && cp <= 0xDFFF))
    return 0;
  return n;
}

}  // namespace

// Durations on every exchange line: integer arithmetic in thousandths
// instead of to_chars' exact decimal conversion (several times slower).
// Only a value exactly halfway between two thousandths may round the other
// way; magnitudes too large for that, and non-finite ones, take the exact
// path (JSON has no NaN: null).
void append_fixed3(std::string& out, double value) {
  if (!std::isfinite(value)) {
    out += "null";
    return;
  }
  if (std::fabs(value) >= 1e12) {
    char buf[400];
    auto r = std::to_chars(buf, buf + sizeof buf, value, std::chars_format::fixed, 3);
    out.append(buf, r.ec == std::errc{} ? r.ptr : buf);
    return;
  }
  long long t = std::llround(value * 1000.0);
  if (t < 0) {
    out += '-';
    t = -t;
  }
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof buf, t / 1000);
  long long frac = t % 1000;
  *r.ptr++ = '.';
  *r.ptr++ = static_cast<char>('0' + frac / 100);
  *r.ptr++ = static_cast<char>('0' + frac / 10 % 10);
  *r.ptr++ = static_cast<char>('0' + frac % 10);
  out.append(buf, r.ptr);
}

void append_json_escaped(std::string& out, std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    // Copy the longest run that needs no escaping in one append.
    std::size_t run = i;
    while (run < n && p[run] >= 0x20 && p[run] < 0x80 && p[run] != '"' && p[run] != '\\') ++run;
    out.append(s.data() + i, run - i);
    i = run;
    if (i >= n) break;
    unsigned char c = p[i];
    if (c >= 0x80) {
      std::size_t len = utf8_sequence(p + i, n - i);
      if (len == 0) {
        out += "\xEF\xBF\xBD";  // U+FFFD
        ++i;
      } else {
        out.append(s.data() + i, len);
        i += len;
      }
      continue;
    }
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        out += "\\u00";
        out += hex[c >> 4];
        out += hex[c & 0xF];
    }
    ++i;
  }
}

Line::Line(Level level, std::string_view event) : level_(level) {
  if (!enabled(level)) return;  // an empty text marks a line nobody will see
  begin_line(text_, level);
  str("event", event);
}

Line& Line::key(std::string_view k) {
  text_ += ",\"";
  text_ += k;  // keys are literals from the source, never from the wire
  text_ += "\":";
  return *this;
}

Line& Line::str(std::string_view k, std::string_view value) {
  if (text_.empty()) return *this;
  key(k);
  text_ += '"';
  append_json_escaped(text_, value);
  text_ += '"';
  return *this;
}

namespace {
template <typename Int>
void append_int(std::string& out, Int value) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, value);
  out.append(buf, r.ptr);
}
}  // namespace

Line& Line::num(std::string_view k, std::uint64_t value) {
  if (text_.empty()) return *this;
  key(k);
  append_int(text_, value);
  return *this;
}

Line& Line::num(std::string_view k, std::int64_t value) {
  if (text_.empty()) return *this;
  key(k);
  append_int(text_, value);
  return *this;
}

Line& Line::fixed3(std::string_view k, double value) {
  if (text_.empty()) return *this;
  key(k);
  append_fixed3(text_, value);
  return *this;
}

Line& Line::boolean(std::string_view k, bool value) {
  if (text_.empty()) return *this;
  key(k);
  text_ += value ? "true" : "false";
  return *this;
}

Line& Line::json(std::string_view k, const nlohmann::json& value) {
  if (text_.empty()) return *this;
  key(k);
  text_ += value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return *this;
}

bool start(const Options& opts, std::string* error) {
  State& s = state();
  s.level.store(static_cast<int>(opts.level));
  s.queue_lines = opts.queue_lines;
  if (!opts.file.empty() && opts.file != "-") {
    int fd = ::open(opts.file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0) {
      if (error) *error = "cannot open log file " + opts.file + ": " + std::strerror(errno);
      return false;
    }
    s.fd = fd;
  }
  s.stopping.store(false);
  s.writer = std::thread(writer_main);
  s.running.store(true, std::memory_order_release);
  return true;
}

void stop() {
  State& s = state();
  if (!s.running.exchange(false)) return;
  s.stopping.store(true, std::memory_order_release);
  wake_writer();
  s.writer.join();
  if (s.fd != STDERR_FILENO) {
    ::close(s.fd);
    s.fd = STDERR_FILENO;
  }
}

bool enabled(Level level) {
  return static_cast<int>(level) >= state().level.load(std::memory_order_relaxed);
}

void emit(Line& line) {
  if (line.text_.empty()) return;
  line.text_ += '}';
  queue_line(line.text_);
}

void emit(Level level, nlohmann::json fields) {
  if (!enabled(level)) return;
  std::string text;
  begin_line(text, level);
  for (auto& [k, v] : fields.items()) {
    if (k == "ts" || k == "level") continue;  // ours
    text += ",\"";
    append_json_escaped(text, k);
    text += "\":";
    // Names from the wire (SNI, CONNECT targets) may not be UTF-8: replace, never throw.
    text += v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  text += '}';
  queue_line(text);
}

std::uint64_t dropped_lines() { return state().dropped.load(std::memory_order_relaxed); }

}  // namespace sightline::log
