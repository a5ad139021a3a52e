// A consumer that records every event as a line of text and checks the
// ordering contract of exchange.h as it goes. For tests and debugging.
#pragma once

#include "exchange/exchange.h"

#include <map>
#include <string>
#include <vector>

namespace sightline::exchange {

class RecordingConsumer final : public Consumer {
 public:
  std::vector<std::string> events;     // "req-head 1 GET /x", "body 1 req 5", ...
  std::vector<std::string> violations; // ordering-contract breaches
  std::map<std::uint64_t, std::string> request_bodies, response_bodies;

  void on_request_head(const Exchange& ex, const Head& head) override {
    State& s = states_[ex.id];
    if (s.stage != Stage::none) violation(ex, "request head twice");
    s.stage = Stage::request;
    events.push_back("req-head " + std::to_string(ex.id) + " " + head.method + " " + head.target);
  }
  void on_body(const Exchange& ex, Direction dir, std::span<const char> data) override {
    State& s = states_[ex.id];
    if (dir == Direction::request && s.request_ended) violation(ex, "request body after its end");
    if (dir == Direction::response && !s.response_head) violation(ex, "response body before head");
    if (s.stage == Stage::done) violation(ex, "body after the end");
    (dir == Direction::request ? request_bodies : response_bodies)[ex.id].append(data.data(), data.size());
    events.push_back("body " + std::to_string(ex.id) + (dir == Direction::request ? " req " : " resp ") +
                     std::to_string(data.size()));
  }
  void on_request_end(const Exchange& ex, const Headers& trailers) override {
    State& s = states_[ex.id];
    if (s.stage == Stage::none || s.request_ended) violation(ex, "request end out of order");
    s.request_ended = true;
    events.push_back("req-end " + std::to_string(ex.id) + " trailers=" + std::to_string(trailers.size()));
  }
  void on_response_head(const Exchange& ex, const Head& head) override {
    State& s = states_[ex.id];
    if (s.stage == Stage::none || s.stage == Stage::done) violation(ex, "response head out of order");
    if (head.status >= 200 || head.status == 101) s.response_head = true;  // 101 is final
    events.push_back("resp-head " + std::to_string(ex.id) + " " + std::to_string(head.status));
  }
  void on_response_end(const Exchange& ex, const Headers& trailers) override {
    State& s = states_[ex.id];
    if (!s.response_head || s.stage == Stage::done) violation(ex, "response end out of order");
    s.stage = Stage::done;
    events.push_back("resp-end " + std::to_string(ex.id) + " trailers=" + std::to_string(trailers.size()));
  }
  void on_abort(const Exchange& ex, std::string_view reason) override {
    State& s = states_[ex.id];
    if (s.stage == Stage::none || s.stage == Stage::done) violation(ex, "abort out of order");
    s.stage = Stage::done;
    events.push_back("abort " + std::to_string(ex.id) + " " + std::string(reason));
  }

 private:
  enum class Stage { none, request, done };
  struct State {
    Stage stage = Stage::none;
    bool request_ended = false;
    bool response_head = false;
  };
  void violation(const Exchange& ex, const char* what) {
    violations.push_back("exchange " + std::to_string(ex.id) + ": " + what);
  }
  std::map<std::uint64_t, State> states_;
};

}  // namespace sightline::exchange
