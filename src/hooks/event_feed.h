// JSON event feed (issue 8): a hook Sink that streams exchange and connection
// records as newline-delimited JSON (hooks/event_json.h) to every reader
// connected to a Unix stream socket, for SIEM forwarders and custom tools.
//
// Each reader gets every record handled after it was accepted, one JSON
// object per line. Lines are formatted once on the consumer thread and sent
// with non-blocking writes; what a reader's socket does not take waits in its
// own backlog, and a reader whose backlog would pass its cap is dropped
// (counted, logged at most once per 10 s): the feed never waits for a reader.
// A small I/O thread blocks in poll() to accept readers, push backlogs and
// notice hang-ups; readers are closed only there, so no descriptor is closed
// while another thread polls it.
//
// The socket file is created with `mode` before listen() (so nobody connects
// through looser permissions), a stale socket left by a dead process is
// replaced, anything else at the path (a live listener, a regular file) is an
// error, and the file is removed at stop if it is still ours.
#pragma once

#include "hooks/events.h"
#include "hooks/pcap.h"

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace sightline::hooks {

struct EventFeedOptions {
  std::string socket_path;
  unsigned mode = 0660;
  bool include_bodies = false;
  std::size_t body_cap = 64 * 1024;             // bytes of each body, when included
  std::size_t reader_backlog_bytes = 4 << 20;   // per reader, then dropped
  std::size_t max_readers = 64;                 // more are refused
};

class EventFeedSink final : public Sink {
 public:
  // Null with *error set if the socket cannot be created.
  static std::unique_ptr<EventFeedSink> create(EventFeedOptions opts, std::string* error);
  ~EventFeedSink() override;
  EventFeedSink(const EventFeedSink&) = delete;
  EventFeedSink& operator=(const EventFeedSink&) = delete;

  std::string_view name() const override { return "events"; }
  Wants wants() const override;
  void on_stream(const StreamEvent&) override {}
  void on_exchange(const ExchangeRecord& rec) override;
  void on_connection(const ConnectionRecord& rec) override;
  void on_stop() override;

  // Counters, readable from any thread.
  std::size_t readers() const { return readers_now_.load(std::memory_order_relaxed); }
  std::uint64_t readers_accepted() const { return accepted_.load(std::memory_order_relaxed); }
  std::uint64_t readers_dropped() const { return dropped_.load(std::memory_order_relaxed); }
  std::uint64_t exchange_records() const { return exchanges_.load(std::memory_order_relaxed); }
  std::uint64_t connection_records() const { return connections_.load(std::memory_order_relaxed); }

 private:
  struct Reader {
    std::uint64_t serial = 0;
    pcap::UniqueFd fd;
    std::string pending;  // not yet taken by the socket, from `sent`
    std::size_t sent = 0;
    bool dead = false;    // dropped or hung up: the I/O thread closes it
    bool read_closed = false;  // the reader shut its sending side
    std::string peer;     // "pid=.. uid=.."
  };
  EventFeedSink(EventFeedOptions opts, pcap::UniqueFd listen_fd, pcap::UniqueFd wake_fd, dev_t dev, ino_t ino);
  void broadcast(const std::string& line);
  // Sends what the socket takes; false when the reader hung up. Under mu_.
  static bool push(Reader& r);
  void wake();
  void io_loop();
  int accept_readers();  // under mu_; 0 or the errno that should pause accepting
  void note_drop(const Reader& r);

  EventFeedOptions opts_;
  pcap::UniqueFd listen_fd_;
  pcap::UniqueFd wake_fd_;  // eventfd: broadcast → I/O thread
  dev_t dev_;
  ino_t ino_;
  std::string line_;  // scratch, consumer thread

  std::mutex mu_;  // readers_, stopping_
  std::vector<std::unique_ptr<Reader>> readers_;
  std::uint64_t next_serial_ = 1;
  bool stopping_ = false;
  std::thread io_thread_;

  std::atomic<std::size_t> readers_now_{0};
  std::atomic<std::uint64_t> accepted_{0}, dropped_{0}, exchanges_{0}, connections_{0};
  std::atomic<std::int64_t> last_drop_log_{-1000};
};

}  // namespace sightline::hooks
