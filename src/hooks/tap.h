// A connection's view of the hook bus: publishes that connection's plaintext
// to the consumers its policy rule selected, and tells the session when a
// blocking consumer wants it to pause.
#pragma once

#include "hooks/bus.h"

#include <nlohmann/json_fwd.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
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

enum class Kind : std::uint8_t { streams, exchanges, connections };

// The channels a policy rule's `hooks` option selects among the consumers
// that want `kind`: all of them when the option is absent, none for an empty
// list.
std::vector<Channel*> select_channels(const Bus& bus, const std::vector<std::string>* names,
                                      Kind kind = Kind::streams);

// Builds a connection record from the session's "connection" log line
// fields (proxy/session.cc log_connection()) and publishes it to the
// consumers that want connection records and that `rule_hooks` (the matched
// rule's `hooks` option, null or empty optional: all) selects. Cheap when
// nobody wants connection records.
void publish_connection(const Bus& bus, const std::optional<std::vector<std::string>>* rule_hooks,
                        std::string_view rule_name, const nlohmann::json& log_fields);
ConnectionRecord connection_record_from_log(const nlohmann::json& log_fields);

}  // namespace sightline::hooks
