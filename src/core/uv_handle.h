// RAII over libuv handles. libuv lets a handle's memory go only in its close
// callback, so the owner closes and the callback frees; destruction of the
// owner never frees memory libuv still references.
#pragma once

#include <uv.h>

#include <utility>

namespace sightline::core {

template <typename T>
class UvHandle {
 public:
  UvHandle() = default;
  UvHandle(const UvHandle&) = delete;
  UvHandle& operator=(const UvHandle&) = delete;
  UvHandle(UvHandle&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  UvHandle& operator=(UvHandle&& o) noexcept {
    if (this != &o) {
      reset();
      h_ = std::exchange(o.h_, nullptr);
    }
    return *this;
  }
  ~UvHandle() { reset(); }

  // Allocates and initialises with `init(loop, handle, args...)`; returns the
  // libuv error code. A handle whose init failed is freed at once (libuv does
  // not know it, so it must not be closed).
  template <typename Init, typename... Args>
  int init(Init init_fn, uv_loop_t* loop, Args&&... args) {
    reset();
    T* h = new T{};
    int rc = init_fn(loop, h, std::forward<Args>(args)...);
    if (rc != 0) {
      delete h;
      return rc;
    }
    h_ = h;
    return 0;
  }

  void reset() {
    if (!h_) return;
    auto* base = reinterpret_cast<uv_handle_t*>(h_);
    h_ = nullptr;
    uv_close(base, [](uv_handle_t* hh) { delete reinterpret_cast<T*>(hh); });
  }

  // Takes over an initialised handle allocated with `new T` (handed over
  // by another owner with release()).
  static UvHandle adopt(T* h) {
    UvHandle u;
    u.h_ = h;
    return u;
  }
  // Gives the open handle up without closing it: the caller now closes it
  // and frees the memory (allocated with `new T`) in its close callback.
  T* release() { return std::exchange(h_, nullptr); }

  T* get() const { return h_; }
  explicit operator bool() const { return h_ != nullptr; }
  uv_handle_t* handle() const { return reinterpret_cast<uv_handle_t*>(h_); }
  uv_stream_t* stream() const { return reinterpret_cast<uv_stream_t*>(h_); }

 private:
  T* h_ = nullptr;
};

}  // namespace sightline::core
