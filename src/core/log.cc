#include "core/log.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
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
  std::vector<std::string> lines;
};

struct State {
  std::mutex registry_mu;  // taken once per thread, at its first line
  std::vector<std::shared_ptr<ThreadQueue>> queues;
  std::atomic<std::uint64_t> wake_seq{0};  // futex-backed wake-up, no shared mutex
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

void write_all(int fd, const std::string& data) {
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
  std::string batch;
  std::vector<std::string> taken;
  for (auto& q : queues) {
    {
      std::lock_guard lock(q->mu);
      taken.swap(q->lines);
    }
    for (auto& l : taken) batch += l;
    taken.clear();
    if (batch.size() > (1u << 20)) {
      write_all(s.fd, batch);
      batch.clear();
    }
  }
  if (!batch.empty()) write_all(s.fd, batch);
}

void writer_main() {
  State& s = state();
  std::uint64_t seen = 0;
  while (!s.stopping.load(std::memory_order_acquire)) {
    s.wake_seq.wait(seen, std::memory_order_acquire);
    seen = s.wake_seq.load(std::memory_order_acquire);
    drain_once();
  }
  drain_once();
}

const char* level_name(Level l) {
  switch (l) {
    case Level::debug: return "debug";
    case Level::info: return "info";
    case Level::warn: return "warn";
    case Level::error: return "error";
  }
  return "info";
}

std::string timestamp() {
  auto now = std::chrono::system_clock::now();
  auto secs = std::chrono::system_clock::to_time_t(now);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()) % 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[96];  // sized for any int values, keeps -Wformat-truncation quiet
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(ms.count()));
  return buf;
}

}  // namespace

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
  s.wake_seq.fetch_add(1, std::memory_order_release);
  s.wake_seq.notify_one();
  s.writer.join();
  if (s.fd != STDERR_FILENO) {
    ::close(s.fd);
    s.fd = STDERR_FILENO;
  }
}

bool enabled(Level level) {
  return static_cast<int>(level) >= state().level.load(std::memory_order_relaxed);
}

void emit(Level level, nlohmann::json fields) {
  if (!enabled(level)) return;
  State& s = state();
  nlohmann::json line = nlohmann::json::object();
  line["ts"] = timestamp();
  line["level"] = level_name(level);
  for (auto& [k, v] : fields.items()) line[k] = std::move(v);
  // Names from the wire (SNI, CONNECT targets) may not be UTF-8: replace, never throw.
  std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  text += '\n';
  if (!s.running.load(std::memory_order_acquire)) {
    write_all(s.fd, text);
    return;
  }
  ThreadQueue& q = my_queue();
  {
    std::lock_guard lock(q.mu);
    if (q.lines.size() >= s.queue_lines) {
      s.dropped.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    q.lines.push_back(std::move(text));
  }
  s.wake_seq.fetch_add(1, std::memory_order_release);
  s.wake_seq.notify_one();
}

std::uint64_t dropped_lines() { return state().dropped.load(std::memory_order_relaxed); }

}  // namespace sightline::log
