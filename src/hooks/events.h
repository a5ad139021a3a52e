// What inspection hooks receive. Workers publish these to the hook bus
// (hooks/bus.h); each consumer (a Sink) handles them on its own thread, so a
// slow consumer never runs on an event loop.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace sightline::hooks {

using WallClock = std::chrono::system_clock;

// One intercepted connection as its two ends saw it: the client's address and
// the server address the client was trying to reach (the upstream's resolved
// address in explicit mode, the original destination in transparent mode).
struct FlowInfo {
  std::uint64_t conn_id = 0;
  sockaddr_storage client{};
  sockaddr_storage server{};
  std::string sni;        // may be empty
  std::string rule;       // policy rule that matched, may be empty
};

enum class StreamKind : std::uint8_t { open, data, close };
enum class FlowDir : std::uint8_t { to_server, to_client };

// Plaintext of one intercepted connection, in order per connection: one open,
// data in each direction as it was decrypted, one close.
struct StreamEvent {
  StreamKind kind = StreamKind::data;
  FlowDir dir = FlowDir::to_server;  // data only
  bool clean = true;                 // close: ended with FIN (true) or abort (false)
  WallClock::time_point ts{};
  std::shared_ptr<const FlowInfo> flow;
  std::string bytes;                 // data only
};

// A consumer of hook events. All calls come from the consumer's own thread
// (never concurrently); it may block on disk or network there.
class Sink {
 public:
  virtual ~Sink() = default;
  virtual std::string_view name() const = 0;
  virtual void on_stream(const StreamEvent& ev) = 0;
  // At least once a second, and when the queue is idle: time-based rotation,
  // flushing, housekeeping.
  virtual void on_tick(WallClock::time_point now) { (void)now; }
  // Last call, after every queued event: flush and close.
  virtual void on_stop() {}
};

}  // namespace sightline::hooks
