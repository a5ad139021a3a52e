#include "hooks/bus.h"
#include "hooks/tap.h"

#include <doctest/doctest.h>

#include <condition_variable>
#include <future>
#include <mutex>
#include <string>
#include <vector>

using namespace sightline::hooks;

namespace {

// Records what it receives; can be held shut to fill its queue.
class TestSink final : public Sink {
 public:
  explicit TestSink(std::string n) : name_(std::move(n)) {}
  std::string_view name() const override { return name_; }
  void on_stream(const StreamEvent& ev) override {
    std::unique_lock lock(mu_);
    gate_cv_.wait(lock, [this] { return open_; });
    log_.push_back(ev.kind == StreamKind::open    ? std::string("open")
                   : ev.kind == StreamKind::close ? std::string(ev.clean ? "close" : "abort")
                                                  : (ev.dir == FlowDir::to_server ? ">" : "<") + ev.bytes);
  }
  void on_stop() override {
    std::lock_guard lock(mu_);
    stopped_ = true;
  }
  void hold() {
    std::lock_guard lock(mu_);
    open_ = false;
  }
  void release() {
    {
      std::lock_guard lock(mu_);
      open_ = true;
    }
    gate_cv_.notify_all();
  }
  std::vector<std::string> log() {
    std::lock_guard lock(mu_);
    return log_;
  }
  bool stopped() {
    std::lock_guard lock(mu_);
    return stopped_;
  }

 private:
  std::string name_;
  std::mutex mu_;
  std::condition_variable gate_cv_;
  bool open_ = true;
  bool stopped_ = false;
  std::vector<std::string> log_;
};

std::shared_ptr<FlowInfo> flow() {
  auto f = std::make_shared<FlowInfo>();
  f->conn_id = 7;
  return f;
}

}  // namespace

TEST_CASE("a tap delivers one connection's events in order to every selected consumer") {
  Bus bus;
  auto a = std::make_unique<TestSink>("pcap");
  auto b = std::make_unique<TestSink>("events");
  TestSink* pa = a.get();
  TestSink* pb = b.get();
  bus.add(std::move(a), {});
  bus.add(std::move(b), {});
  for (auto& c : bus.channels()) c->start(nullptr, 0, nullptr);

  std::vector<std::string> only{"events"};
  CHECK(select_channels(bus, nullptr).size() == 2);
  CHECK(select_channels(bus, &only).size() == 1);
  std::vector<std::string> none;
  CHECK(select_channels(bus, &none).empty());

  StreamTap tap(select_channels(bus, nullptr), flow());
  CHECK_FALSE(tap.open());
  CHECK_FALSE(tap.data(FlowDir::to_server, std::string_view("GET /")));
  CHECK_FALSE(tap.data(FlowDir::to_client, std::string_view("200")));
  tap.close(true);
  tap.close(false);  // once only
  bus.stop();
  const std::vector<std::string> want{"open", ">GET /", "<200", "close"};
  CHECK(pa->log() == want);
  CHECK(pb->log() == want);
  CHECK(pa->stopped());
  CHECK(bus.channels()[0]->events() == 4);
}

TEST_CASE("a full queue drops events for drop consumers and counts them") {
  Bus bus;
  auto s = std::make_unique<TestSink>("slow");
  TestSink* ps = s.get();
  ps->hold();
  bus.add(std::move(s), ChannelOptions{1024, Overflow::drop});
  Channel& ch = *bus.channels()[0];
  ch.start(nullptr, 0, nullptr);
  StreamTap tap({&ch}, flow());
  std::string chunk(300, 'x');
  int paused = 0;
  for (int i = 0; i < 20; ++i) paused += tap.data(FlowDir::to_server, chunk) ? 1 : 0;
  CHECK(paused == 0);  // drop mode never pauses the connection
  CHECK(ch.dropped() > 0);
  ps->release();
  bus.stop();
  CHECK(ch.dropped() + ps->log().size() == 20);
}

TEST_CASE("a full queue pauses the connection for block consumers until it drains") {
  Bus bus;
  auto s = std::make_unique<TestSink>("archive-like");
  TestSink* ps = s.get();
  ps->hold();
  bus.add(std::move(s), ChannelOptions{1024, Overflow::block});
  Channel& ch = *bus.channels()[0];
  ch.start(nullptr, 0, nullptr);
  StreamTap tap({&ch}, flow());
  std::string chunk(300, 'x');
  int sent = 0;
  while (!tap.data(FlowDir::to_server, chunk)) ++sent;
  ++sent;  // the event that crossed the limit was queued too
  CHECK(sent >= 2);
  std::promise<void> resumed;
  tap.when_drained([&] { resumed.set_value(); });
  ps->release();
  resumed.get_future().wait();
  bus.stop();
  CHECK(ch.dropped() == 0);
  CHECK(ch.over_limit() >= 1);
  CHECK(ps->log().size() == static_cast<std::size_t>(sent));  // nothing lost
}
