#include "hooks/pcap_sink.h"

#include "core/log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <vector>

namespace sightline::hooks {

namespace {

constexpr std::size_t kFlushAt = 1 << 20;
// After a failed open or write, packets are dropped this long before the next
// attempt: a full disk must not turn every packet into a syscall and a log line.
constexpr auto kRetryAfter = std::chrono::seconds(1);
// Readers are polled at most this often from on_stream (every tick anyway).
constexpr auto kReaderPollEvery = std::chrono::milliseconds(20);

bool is_capture_name(std::string_view n) {
  auto ends = [&](std::string_view s) { return n.size() >= s.size() && n.substr(n.size() - s.size()) == s; };
  return n.starts_with("sightline-") && (ends(".pcapng") || ends(".pcap"));
}

}  // namespace

// One capture file at a time: lazily opened, rotated by size and age.
class PcapSink::FileWriter {
 public:
  explicit FileWriter(PcapSink& sink) : sink_(sink), opts_(sink.opts_) { buf_.reserve(kFlushAt + 70000); }
  ~FileWriter() { close(); }

  void write(WallClock::time_point ts, std::string_view record) {
    if (fd_ && need_rotation(ts, record.size())) close();
    if (!fd_ && !open_new(ts)) return;
    buf_.append(record);
    file_bytes_ += record.size();
    ++file_packets_;
    if (buf_.size() >= kFlushAt) flush();
  }

  void tick(WallClock::time_point now) {
    if (fd_ && opts_.max_file_age.count() > 0 && now - opened_at_ >= opts_.max_file_age) close();
    else flush();
  }

  void close() {
    if (!fd_) return;
    flush();
    fd_.reset();
  }

 private:
  bool need_rotation(WallClock::time_point ts, std::size_t next) const {
    if (file_packets_ == 0) return false;
    if (opts_.max_file_bytes > 0 && file_bytes_ + next > opts_.max_file_bytes) return true;
    return opts_.max_file_age.count() > 0 && ts - opened_at_ >= opts_.max_file_age;
  }

  bool open_new(WallClock::time_point ts) {
    auto steady_now = std::chrono::steady_clock::now();
    if (steady_now < retry_at_) return false;
    std::time_t secs = WallClock::to_time_t(ts);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
    const char* ext = opts_.format == pcap::Format::pcapng ? "pcapng" : "pcap";
    // A restart within the same second may find the name taken: next number.
    for (int attempt = 0; attempt < 100; ++attempt) {
      char name[96];
      std::snprintf(name, sizeof name, "sightline-%s-%04u.%s", stamp, ++seq_, ext);
      std::string path = opts_.dir + "/" + name;
      int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd < 0 && errno == EEXIST) continue;
      if (fd < 0) {
        fail("open", errno, path);
        return false;
      }
      fd_.reset(fd);
      path_ = std::move(path);
      current_name_ = name;
      opened_at_ = ts;
      file_bytes_ = 0;
      file_packets_ = 0;
      buf_.clear();
      pcap::append_header(buf_, opts_.format, opts_.ts_resolution);
      file_bytes_ = buf_.size();
      sink_.files_opened_.fetch_add(1, std::memory_order_relaxed);
      prune();
      return true;
    }
    fail("open", EEXIST, opts_.dir);
    return false;
  }

  void flush() {
    if (!fd_ || buf_.empty()) return;
    std::size_t off = 0;
    while (off < buf_.size()) {
      ssize_t n = ::write(fd_.get(), buf_.data() + off, buf_.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        fail("write", n < 0 ? errno : ENOSPC, path_);
        return;
      }
      off += static_cast<std::size_t>(n);
      sink_.bytes_written_.fetch_add(static_cast<std::uint64_t>(n), std::memory_order_relaxed);
    }
    buf_.clear();
    error_logged_ = false;
  }

  // The file is abandoned (a partial record would corrupt anything appended
  // after it); the next packet after kRetryAfter starts a new one.
  void fail(const char* what, int err, const std::string& path) {
    sink_.write_errors_.fetch_add(1, std::memory_order_relaxed);
    if (!error_logged_) {
      error_logged_ = true;
      log::emit(log::Line(log::Level::error, "pcap_error")
                    .str("op", what)
                    .str("path", path)
                    .str("msg", std::strerror(err)));
    }
    fd_.reset();
    buf_.clear();
    retry_at_ = std::chrono::steady_clock::now() + kRetryAfter;
  }

  // Keeps at most max_files capture files in the directory, this run's and
  // earlier ones alike; names sort by time.
  void prune() {
    if (opts_.max_files == 0) return;
    namespace fs = std::filesystem;
    std::error_code ec;
    std::vector<std::string> names;
    for (fs::directory_iterator it(opts_.dir, ec), end; !ec && it != end; it.increment(ec)) {
      std::string n = it->path().filename().string();
      if (is_capture_name(n)) names.push_back(std::move(n));
    }
    if (names.size() <= opts_.max_files) return;
    std::sort(names.begin(), names.end());
    std::size_t excess = names.size() - opts_.max_files;
    for (std::size_t i = 0; i < names.size() && excess > 0; ++i) {
      if (names[i] == current_name_) continue;
      ::unlink((opts_.dir + "/" + names[i]).c_str());
      --excess;
    }
  }

  PcapSink& sink_;
  const PcapOptions& opts_;
  pcap::UniqueFd fd_;
  std::string path_;
  std::string current_name_;
  std::string buf_;
  std::uint64_t file_bytes_ = 0;
  std::uint64_t file_packets_ = 0;
  WallClock::time_point opened_at_{};
  unsigned seq_ = 0;
  std::chrono::steady_clock::time_point retry_at_{};
  bool error_logged_ = false;
};

std::unique_ptr<PcapSink> PcapSink::create(PcapOptions opts, std::string* error) {
  auto fail = [&](std::string msg) {
    if (error) *error = std::move(msg);
    return std::unique_ptr<PcapSink>();
  };
  if (!opts.dir.empty()) {
    struct stat st {};
    if (::stat(opts.dir.c_str(), &st) != 0) {
      // Only the last component: a missing parent is more likely a typo.
      if (::mkdir(opts.dir.c_str(), 0700) != 0)
        return fail("pcap dir '" + opts.dir + "': " + std::strerror(errno));
    } else if (!S_ISDIR(st.st_mode)) {
      return fail("pcap dir '" + opts.dir + "': not a directory");
    }
  }
  std::unique_ptr<pcap::PcapOverIp> over_ip;
  if (!opts.over_ip_listen.empty()) {
    std::string err;
    over_ip = pcap::PcapOverIp::listen(opts.over_ip_listen, opts.reader_backlog_bytes, &err);
    if (!over_ip) return fail("pcap over_ip_listen: " + err);
  }
  std::unique_ptr<PcapSink> sink(new PcapSink(std::move(opts)));
  sink->over_ip_ = std::move(over_ip);
  return sink;
}

PcapSink::PcapSink(PcapOptions opts) : opts_(std::move(opts)) {
  if (!opts_.dir.empty()) file_ = std::make_unique<FileWriter>(*this);
  frame_fn_ = [this](WallClock::time_point ts, std::span<const std::uint8_t> frame) {
    emit_frame(ts, frame);
  };
}

PcapSink::~PcapSink() {
  if (!stopped_) on_stop();
}

std::uint64_t PcapSink::readers_dropped() const {
  return over_ip_ ? over_ip_->readers_dropped() : 0;
}

std::uint16_t PcapSink::over_ip_port() const { return over_ip_ ? over_ip_->local_port() : 0; }

void PcapSink::emit_frame(WallClock::time_point ts, std::span<const std::uint8_t> frame) {
  packets_.fetch_add(1, std::memory_order_relaxed);
  bool file_is_stream_format =
      opts_.format == pcap::Format::pcap && opts_.ts_resolution == pcap::TsResolution::micro;
  if (file_) {
    record_.clear();
    pcap::append_record(record_, opts_.format, opts_.ts_resolution, ts, frame);
    file_->write(ts, record_);
  }
  if (over_ip_ && over_ip_->readers() > 0) {
    if (!file_ || !file_is_stream_format) {
      record_.clear();
      pcap::append_record(record_, pcap::Format::pcap, pcap::TsResolution::micro, ts, frame);
    }
    over_ip_->publish(record_);
  }
}

PcapSink::Flow& PcapSink::flow_for(const StreamEvent& ev) {
  std::uint64_t id = ev.flow->conn_id;
  if (auto it = flows_.find(id); it != flows_.end()) {
    lru_.splice(lru_.end(), lru_, it->second.lru);
    return it->second;
  }
  // Bounded: the least recently active flow is shown as reset and forgotten.
  while (!flows_.empty() && flows_.size() >= std::max<std::size_t>(opts_.max_flows, 1)) {
    auto old = flows_.find(lru_.front());
    old->second.enc.abort(ev.ts, frame_fn_);
    flows_.erase(old);
    lru_.pop_front();
    flows_evicted_.fetch_add(1, std::memory_order_relaxed);
  }
  auto pos = lru_.insert(lru_.end(), id);
  auto [it, inserted] = flows_.emplace(id, Flow{pcap::TcpFlowEncoder(*ev.flow, opts_.port_map), pos});
  (void)inserted;
  it->second.enc.open(ev.ts, frame_fn_);
  return it->second;
}

void PcapSink::on_stream(const StreamEvent& ev) {
  if (stopped_ || !ev.flow) return;
  if (over_ip_) {
    auto now = std::chrono::steady_clock::now();
    if (now >= next_reader_poll_) {
      over_ip_->poll();
      next_reader_poll_ = now + kReaderPollEvery;
    }
  }
  switch (ev.kind) {
    case StreamKind::open:
      // A repeated open for a known flow adds nothing.
      flow_for(ev);
      break;
    case StreamKind::data:
      // Data for a flow whose open was never seen opens it lazily.
      if (!ev.bytes.empty()) flow_for(ev).enc.data(ev.dir, ev.bytes, ev.ts, frame_fn_);
      break;
    case StreamKind::close: {
      auto it = flows_.find(ev.flow->conn_id);
      if (it == flows_.end()) break;  // nothing was shown for it
      it->second.enc.close(ev.clean, ev.ts, frame_fn_);
      lru_.erase(it->second.lru);
      flows_.erase(it);
      break;
    }
  }
}

void PcapSink::on_tick(WallClock::time_point now) {
  if (stopped_) return;
  if (file_) file_->tick(now);
  if (over_ip_) {
    over_ip_->poll();
    next_reader_poll_ = std::chrono::steady_clock::now() + kReaderPollEvery;
  }
}

void PcapSink::on_stop() {
  if (stopped_) return;
  stopped_ = true;
  if (file_) file_->close();
  if (over_ip_) {
    over_ip_->poll();  // one last push of what the sockets will take
    over_ip_->close();
  }
}

}  // namespace sightline::hooks
