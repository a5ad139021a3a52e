#include "hooks/tap.h"

#include <algorithm>

namespace sightline::hooks {

StreamTap::StreamTap(std::vector<Channel*> channels, std::shared_ptr<const FlowInfo> flow)
    : channels_(std::move(channels)), flow_(std::move(flow)) {}

bool StreamTap::publish(StreamEvent&& ev) {
  bool pause = false;
  for (std::size_t i = 0; i < channels_.size(); ++i) {
    Channel* c = channels_[i];
    // The last consumer takes the event itself; the others a copy.
    Publish r = i + 1 == channels_.size() ? c->publish(std::move(ev)) : c->publish(ev);
    if (r == Publish::over_limit) {
      if (std::find(over_limit_.begin(), over_limit_.end(), c) == over_limit_.end())
        over_limit_.push_back(c);
      pause = true;
    }
  }
  return pause;
}

bool StreamTap::open() {
  if (channels_.empty()) return false;
  StreamEvent ev;
  ev.kind = StreamKind::open;
  ev.ts = WallClock::now();
  ev.flow = flow_;
  return publish(std::move(ev));
}

bool StreamTap::data(FlowDir dir, std::span<const char> bytes) {
  if (channels_.empty() || closed_ || bytes.empty()) return false;
  StreamEvent ev;
  ev.kind = StreamKind::data;
  ev.dir = dir;
  ev.ts = WallClock::now();
  ev.flow = flow_;
  ev.bytes.assign(bytes.data(), bytes.size());
  return publish(std::move(ev));
}

void StreamTap::close(bool clean) {
  if (channels_.empty() || closed_) return;
  closed_ = true;
  StreamEvent ev;
  ev.kind = StreamKind::close;
  ev.clean = clean;
  ev.ts = WallClock::now();
  ev.flow = flow_;
  (void)publish(std::move(ev));
}

void StreamTap::when_drained(std::function<void()> fn) {
  if (over_limit_.empty()) {
    fn();
    return;
  }
  // Wait for each over-limit consumer in turn; the last one runs `fn`.
  auto chain = std::make_shared<std::function<void(std::size_t)>>();
  auto waiting = std::make_shared<std::vector<Channel*>>(std::move(over_limit_));
  over_limit_.clear();
  *chain = [waiting, fn = std::move(fn), weak = std::weak_ptr(chain)](std::size_t i) {
    if (i == waiting->size()) {
      fn();
      return;
    }
    auto self = weak.lock();
    (*waiting)[i]->when_drained([self, i] { (*self)(i + 1); });
  };
  (*chain)(0);
}

std::vector<Channel*> select_channels(const Bus& bus, const std::vector<std::string>* names) {
  std::vector<Channel*> out;
  for (auto& c : bus.channels())
    if (!names || std::find(names->begin(), names->end(), c->name()) != names->end())
      out.push_back(c.get());
  return out;
}

}  // namespace sightline::hooks
