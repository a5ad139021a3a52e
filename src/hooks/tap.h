// A connection's view of the hook bus: publishes that connection's plaintext
// to the consumers its policy rule selected, and tells the session when a
// blocking consumer wants it to pause.
#pragma once

#include "hooks/bus.h"

#include <functional>
#include <memory>
#include <span>
#include <vector>

namespace sightline::hooks {

class StreamTap {
 public:
  StreamTap(std::vector<Channel*> channels, std::shared_ptr<const FlowInfo> flow);

  // Each returns true when a consumer with on_overflow = "block" is over its
  // queue limit: the caller stops reading and calls when_drained().
  bool open();
  bool data(FlowDir dir, std::span<const char> bytes);
  // Ends the flow (once; later calls do nothing).
  void close(bool clean);

  // Runs `fn` on a consumer thread once every over-limit consumer has drained
  // (the caller posts it to its own loop).
  void when_drained(std::function<void()> fn);

  bool active() const { return !channels_.empty(); }

 private:
  bool publish(StreamEvent&& ev);

  std::vector<Channel*> channels_;
  std::vector<Channel*> over_limit_;
  std::shared_ptr<const FlowInfo> flow_;
  bool closed_ = false;
};

// The channels a policy rule's `hooks` option selects: every stream
// consumer when the option is absent, none for an empty list.
std::vector<Channel*> select_channels(const Bus& bus, const std::vector<std::string>* names);

}  // namespace sightline::hooks
