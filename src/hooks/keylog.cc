#include "hooks/keylog.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace sightline::hooks {
namespace {

constexpr std::size_t kMaxPending = 4u << 20;

int ex_index() {
  static const int idx = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return idx;
}

void keylog_cb(const SSL* ssl, const char* line) {
  auto* f = static_cast<KeylogFile*>(SSL_get_ex_data(ssl, ex_index()));
  if (f) f->append(line);
}

}  // namespace

std::unique_ptr<KeylogFile> KeylogFile::open(const std::string& path, std::string* error) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    if (error) *error = "cannot open key log " + path + ": " + std::strerror(errno);
    return nullptr;
  }
  // An existing file keeps its mode on open(): refuse one others can read.
  struct stat st{};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (st.st_mode & 077) != 0) {
    if (error) *error = "key log " + path + " must be a regular file readable by its owner only (mode 0600)";
    ::close(fd);
    return nullptr;
  }
  return std::unique_ptr<KeylogFile>(new KeylogFile(path, fd));
}

KeylogFile::KeylogFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {
  writer_ = std::thread([this] { run(); });
}

KeylogFile::~KeylogFile() {
  stop();
  ::close(fd_);
}

void KeylogFile::append(std::string_view line) {
  bool wake;
  {
    std::lock_guard lock(mu_);
    if (stopping_ || pending_.size() + line.size() + 1 > kMaxPending) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    wake = pending_.empty();
    pending_.append(line);
    pending_ += '\n';
  }
  lines_.fetch_add(1, std::memory_order_relaxed);
  if (wake) cv_.notify_one();
}

void KeylogFile::stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_one();
  if (writer_.joinable()) writer_.join();
}

void KeylogFile::run() {
  std::string batch;
  for (;;) {
    bool done;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return !pending_.empty() || stopping_; });
      batch.swap(pending_);
      done = stopping_ && batch.empty();
    }
    // The batch holds whole lines only: with O_APPEND each write lands
    // complete at the end of the file.
    std::size_t off = 0;
    while (off < batch.size()) {
      ssize_t n = ::write(fd_, batch.data() + off, batch.size() - off);
      if (n < 0) {
        if (errno == EINTR) continue;
        dropped_.fetch_add(1, std::memory_order_relaxed);
        break;
      }
      off += static_cast<std::size_t>(n);
    }
    batch.clear();
    if (done) return;
  }
}

void set_keylog(SSL* ssl, KeylogFile* file) { SSL_set_ex_data(ssl, ex_index(), file); }

void enable_keylog_callback(SSL_CTX* ctx) { SSL_CTX_set_keylog_callback(ctx, keylog_cb); }

}  // namespace sightline::hooks
