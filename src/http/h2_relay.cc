#include "http/h2_relay.h"

#include "core/log.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstring>
#include <string_view>
#include <vector>

namespace sightline::http {

using exchange::Clock;

namespace {

using HeaderPairs = std::vector<std::pair<std::string, std::string>>;

std::vector<nghttp2_nv> to_nv(const HeaderPairs& h) {
  std::vector<nghttp2_nv> nv;
  nv.reserve(h.size());
  for (const auto& [n, v] : h)
    nv.push_back({reinterpret_cast<uint8_t*>(const_cast<char*>(n.data())),
                  reinterpret_cast<uint8_t*>(const_cast<char*>(v.data())), n.size(), v.size(),
                  NGHTTP2_NV_FLAG_NONE});
  return nv;
}

// `with_headers` false: pseudo-headers only (no consumer reads the fields).
exchange::Head to_event_head(const HeaderPairs& h, bool request, bool with_headers = true) {
  exchange::Head out;
  out.version = "HTTP/2";
  for (const auto& [n, v] : h) {
    if (n.empty() || n[0] != ':') {
      if (with_headers) out.headers.push_back({n, v});
    } else if (n == ":method") {
      out.method = v;
    } else if (n == ":scheme") {
      out.scheme = v;
    } else if (n == ":authority") {
      out.authority = v;
    } else if (n == ":path") {
      out.target = v;
    } else if (n == ":status") {
      out.status = std::atoi(v.c_str());
    }
  }
  (void)request;
  return out;
}

exchange::Headers to_event_headers(const HeaderPairs& h) {
  exchange::Headers out;
  for (const auto& [n, v] : h) out.push_back({n, v});
  return out;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// The declared body length, to decide before holding anything whether a
// body is over icap.max_body (nullopt: unknown or malformed).
std::optional<std::uint64_t> content_length(const HeaderPairs& h) {
  for (const auto& [n, v] : h) {
    if (n != "content-length") continue;
    std::uint64_t len = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), len);
    if (ec != std::errc{} || p != v.data() + v.size()) return std::nullopt;
    return len;
  }
  return std::nullopt;
}

// An ICAP answer's HTTP/1.1 fields as HTTP/2 regular fields: lower-case,
// without what HTTP/2 forbids (connection-specific fields, RFC 9113 8.2.2)
// or replaces (Host by :authority), and without its framing: the body we
// send is `length` bytes, declared when `with_length`.
void append_fields(HeaderPairs& out, const exchange::Headers& in, std::size_t length,
                   bool with_length) {
  for (const auto& f : in) {
    std::string n = lower(f.name);
    if (n == "connection" || n == "keep-alive" || n == "proxy-connection" ||
        n == "transfer-encoding" || n == "upgrade" || n == "host" || n == "content-length" ||
        n.empty() || n[0] == ':' || (n == "te" && lower(f.value) != "trailers"))
      continue;
    out.emplace_back(std::move(n), f.value);
  }
  if (with_length) out.emplace_back("content-length", std::to_string(length));
}

std::string field(const HeaderPairs& h, std::string_view name) {
  for (const auto& [n, v] : h)
    if (n == name) return v;
  return {};
}

}  // namespace

// One client stream and the origin stream it maps to. Body bytes wait here
// between the two sessions; nghttp2's windows bound how many can.
struct H2Relay::Stream {
  std::int32_t down_id = 0;
  std::int32_t up_id = -1;  // -1 until submitted
  exchange::Exchange ex;
  HeaderPairs collecting;  // header block being received
  HeaderPairs req_head, resp_head;  // fields to submit (kept while held for ICAP)
  HeaderPairs req_trailers, resp_trailers;
  std::string req_body, resp_body;  // not yet taken by the other session
  std::size_t req_off = 0, resp_off = 0;
  bool req_end = false, resp_end = false;
  bool resp_head_sent = false;
  bool resp_head_in = false;  // the origin's final (non-1xx) response head arrived
  bool down_closed = false, up_closed = false;
  // The exchange's ending (response end or abort) was reported, or none is
  // owed: true until the request head is, since a header block nghttp2
  // rejects (or the connection's end) may close the stream before that.
  bool done_reported = true;
  bool synthetic = false;  // response made by the proxy (error page)
  bool head_request = false;
  // ICAP: the message is held (not submitted) until its body ended and the
  // verdict came; `*_icap` once the call is out.
  bool req_held = false, resp_held = false;
  bool req_icap = false, resp_icap = false;
  // Held body bytes whose window was already handed back to the sender while
  // holding: not credited again when they are sent on.
  std::size_t req_prepaid = 0, resp_prepaid = 0;
  // Held bytes whose connection window went back but whose stream window is
  // withheld: the connection's held bytes were over budget (back-pressure on
  // this stream only, the others keep their windows).
  std::size_t req_unpaid = 0, resp_unpaid = 0;
  exchange::Head req_event;  // the request, as RESPMOD context
};

struct H2Relay::Callbacks {
  static H2Relay& relay(void* user_data) { return *static_cast<H2Relay*>(user_data); }

  static int on_begin_headers(nghttp2_session* s, const nghttp2_frame* f, void* ud) {
    H2Relay& r = relay(ud);
    if (f->hd.type != NGHTTP2_HEADERS) return 0;
    if (s == r.down_ && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
      auto st = std::make_unique<Stream>();
      st->down_id = f->hd.stream_id;
      st->ex.id = exchange::next_exchange_id(r.connection_->worker);
      st->ex.connection = r.connection_;
      st->ex.stream = static_cast<std::uint32_t>(f->hd.stream_id);
      st->ex.protocol = "HTTP/2";
      r.last_down_stream_ = std::max(r.last_down_stream_, f->hd.stream_id);
      r.streams_[f->hd.stream_id] = std::move(st);
      return 0;
    }
    Stream* st = s == r.down_ ? r.by_down(f->hd.stream_id) : r.by_up(f->hd.stream_id);
    if (st) st->collecting.clear();
    return 0;
  }

  static int on_header(nghttp2_session* s, const nghttp2_frame* f, const uint8_t* name,
                       size_t namelen, const uint8_t* value, size_t valuelen, uint8_t, void* ud) {
    H2Relay& r = relay(ud);
    Stream* st = s == r.down_ ? r.by_down(f->hd.stream_id) : r.by_up(f->hd.stream_id);
    if (!st) return 0;
    // nghttp2 checks that :status has three digits; like the HTTP/1.1
    // parser, the proxy also refuses one of no class (0xx): the response is
    // malformed, the stream is reset and the client gets a 502.
    if (s == r.up_ && namelen == 7 && std::memcmp(name, ":status", 7) == 0 && valuelen > 0 && value[0] == '0') {
      nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_PROTOCOL_ERROR);
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    st->collecting.emplace_back(std::string(reinterpret_cast<const char*>(name), namelen),
                                std::string(reinterpret_cast<const char*>(value), valuelen));
    return 0;
  }

  static int on_frame_recv(nghttp2_session* s, const nghttp2_frame* f, void* ud) {
    H2Relay& r = relay(ud);
    const bool end_stream = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (f->hd.type == NGHTTP2_GOAWAY) {
      if (s == r.up_) {
        // The origin is going away: tell the client which of its streams
        // will still be answered, so it can retry the others elsewhere.
        std::int32_t last = 0;
        for (auto& [id, st] : r.streams_)
          if (st->up_id > 0 && st->up_id <= f->goaway.last_stream_id) last = std::max(last, id);
        nghttp2_submit_goaway(r.down_, NGHTTP2_FLAG_NONE, last, f->goaway.error_code, nullptr, 0);
      } else {
        nghttp2_submit_goaway(r.up_, NGHTTP2_FLAG_NONE, 0, f->goaway.error_code, nullptr, 0);
      }
      return 0;
    }
    if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) return 0;
    if (s == r.down_) {
      Stream* st = r.by_down(f->hd.stream_id);
      if (!st) return 0;
      if (f->hd.type == NGHTTP2_HEADERS) {
        if (f->headers.cat == NGHTTP2_HCAT_REQUEST) {
          exchange::Head head = to_event_head(st->collecting, true, r.headers_wanted_ || r.icap_.respmod);
          st->ex.method = head.method;
          st->ex.authority = head.authority;
          st->ex.target = head.target;
          st->ex.timing.request_head_in = Clock::now();
          st->done_reported = false;  // from now on an ending is owed
          r.consumer_.on_request_head(st->ex, head);
          st->req_head = std::move(st->collecting);
          st->collecting.clear();
          st->head_request = head.method == "HEAD";
          if (end_stream) st->req_end = true;
          if (r.icap_.respmod) st->req_event = head;
          if (r.icap_.reqmod && head.method != "CONNECT") {
            auto cl = content_length(st->req_head);
            if (cl && *cl > r.icap_.max_body) {
              // Decided before holding anything: the body streams through unadapted.
              r.bypass_too_large(*st, icap::Method::reqmod);
            } else {
              st->req_held = true;
            }
          }
          if (!st->req_held) {
            r.submit_request(*st);
          } else if (!end_stream && lower(field(st->req_head, "expect")) == "100-continue") {
            // The client may wait for 100 before sending the body ICAP
            // needs, and no origin stream exists yet to send one.
            nghttp2_nv nv{const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(":status")),
                          const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>("100")), 7, 3,
                          NGHTTP2_NV_FLAG_NONE};
            nghttp2_submit_headers(r.down_, NGHTTP2_FLAG_NONE, st->down_id, nullptr, &nv, 1, nullptr);
          }
          if (end_stream) {
            r.consumer_.on_request_end(st->ex, {});
            if (st->req_held) r.send_reqmod(*st);
          }
          return 0;
        }
        st->req_trailers = std::move(st->collecting);
      }
      if (end_stream && !st->req_end) {
        st->req_end = true;
        r.consumer_.on_request_end(st->ex, to_event_headers(st->req_trailers));
        if (st->req_held) r.send_reqmod(*st);
        else if (st->up_id > 0) nghttp2_session_resume_data(r.up_, st->up_id);
      }
      return 0;
    }
    Stream* st = r.by_up(f->hd.stream_id);
    if (!st) return 0;
    if (f->hd.type == NGHTTP2_HEADERS) {
      // nghttp2 files the final response that follows 1xx heads (100
      // Continue, 103 Early Hints) under HCAT_HEADERS, like trailers.
      if (f->headers.cat == NGHTTP2_HCAT_RESPONSE || !st->resp_head_in) {
        exchange::Head head = to_event_head(st->collecting, false, r.headers_wanted_);
        if (head.status >= 100 && head.status < 200) {
          // Informational: relayed as a non-final header block.
          auto nv = to_nv(st->collecting);
          nghttp2_submit_headers(r.down_, NGHTTP2_FLAG_NONE, st->down_id, nullptr, nv.data(),
                                 nv.size(), nullptr);
          r.consumer_.on_response_head(st->ex, head);
          return 0;
        }
        st->resp_head_in = true;
        st->ex.status = head.status;
        st->ex.timing.response_head_in = Clock::now();
        r.consumer_.on_response_head(st->ex, head);
        st->resp_head = std::move(st->collecting);
        st->collecting.clear();
        if (end_stream) st->resp_end = true;
        bool has_body = !end_stream && head.status != 204 && head.status != 304 && !st->head_request;
        if (r.icap_.respmod && has_body && !st->synthetic) {
          auto cl = content_length(st->resp_head);
          if (cl && *cl > r.icap_.max_body) r.bypass_too_large(*st, icap::Method::respmod);
          else st->resp_held = true;
        }
        if (!st->resp_held) r.submit_response(*st);
      } else {
        st->resp_trailers = std::move(st->collecting);
      }
    }
    if (end_stream) {
      st->resp_end = true;
      if (st->resp_held) r.send_respmod(*st);
      else if (st->resp_head_sent) nghttp2_session_resume_data(r.down_, st->down_id);
    }
    return 0;
  }

  static int on_data_chunk(nghttp2_session* s, uint8_t, int32_t id, const uint8_t* data,
                           size_t len, void* ud) {
    H2Relay& r = relay(ud);
    std::span<const char> bytes(reinterpret_cast<const char*>(data), len);
    if (s == r.down_) {
      Stream* st = r.by_down(id);
      if (!st || st->up_closed) {
        // Nobody will take these bytes: give the window back at once.
        nghttp2_session_consume(r.down_, id, len);
        return 0;
      }
      st->req_body.append(bytes.data(), bytes.size());
      st->ex.request_body_bytes += len;
      r.consumer_.on_body(st->ex, exchange::Direction::request, bytes);
      if (st->req_held) r.hold_data(Side::client, *st, len);
      else if (st->up_id > 0) nghttp2_session_resume_data(r.up_, st->up_id);
    } else {
      Stream* st = r.by_up(id);
      if (!st || st->down_closed) {
        nghttp2_session_consume(r.up_, id, len);
        return 0;
      }
      st->resp_body.append(bytes.data(), bytes.size());
      st->ex.response_body_bytes += len;
      r.consumer_.on_body(st->ex, exchange::Direction::response, bytes);
      if (st->resp_held) r.hold_data(Side::upstream, *st, len);
      else if (st->resp_head_sent) nghttp2_session_resume_data(r.down_, st->down_id);
    }
    return 0;
  }

  static int on_frame_send(nghttp2_session* s, const nghttp2_frame* f, void* ud) {
    H2Relay& r = relay(ud);
    if (f->hd.type != NGHTTP2_HEADERS) return 0;
    if (s == r.up_) {
      if (Stream* st = r.by_up(f->hd.stream_id);
          st && st->ex.timing.request_head_out == Clock::time_point{})
        st->ex.timing.request_head_out = Clock::now();
    } else if (Stream* st = r.by_down(f->hd.stream_id);
               st && f->headers.cat == NGHTTP2_HCAT_RESPONSE &&
               st->ex.timing.response_head_out == Clock::time_point{} && st->ex.status >= 200) {
      st->ex.timing.response_head_out = Clock::now();
    }
    return 0;
  }

  static int on_stream_close(nghttp2_session* s, int32_t id, uint32_t error_code, void* ud) {
    H2Relay& r = relay(ud);
    if (s == r.down_) {
      Stream* st = r.by_down(id);
      if (!st) return 0;
      st->down_closed = true;
      if (!st->done_reported) {
        st->done_reported = true;
        if (error_code == NGHTTP2_NO_ERROR && st->resp_end) {
          st->ex.timing.end = Clock::now();
          r.consumer_.on_response_end(st->ex, to_event_headers(st->resp_trailers));
        } else {
          r.consumer_.on_abort(st->ex, error_code == NGHTTP2_NO_ERROR
                                           ? std::string_view("stream closed early")
                                           : std::string_view(nghttp2_http2_strerror(error_code)));
        }
      }
      // The client reset its stream: cancel the origin's too.
      if (!st->up_closed && st->up_id > 0)
        nghttp2_submit_rst_stream(r.up_, NGHTTP2_FLAG_NONE, st->up_id,
                                  error_code == NGHTTP2_NO_ERROR ? static_cast<uint32_t>(NGHTTP2_CANCEL) : error_code);
      // Window for bytes that will never be sent on.
      std::size_t unsent = st->resp_body.size() - st->resp_off;
      if (unsent && st->up_id > 0 && !st->synthetic) r.credit(Side::upstream, *st, unsent);
      r.release_if_closed(st);
      return 0;
    }
    Stream* st = r.by_up(id);
    if (!st) return 0;
    st->up_closed = true;
    std::size_t unsent = st->req_body.size() - st->req_off;
    if (unsent) r.credit(Side::client, *st, unsent);
    if (error_code != NGHTTP2_NO_ERROR && !st->down_closed) {
      if (!st->resp_head_sent) {
        r.answer_error(*st, 502, std::string("origin reset the stream: ") +
                                     nghttp2_http2_strerror(error_code));
      } else {
        nghttp2_submit_rst_stream(r.down_, NGHTTP2_FLAG_NONE, st->down_id, error_code);
      }
    } else if (!st->resp_end && !st->down_closed) {
      r.answer_error(*st, 502, "origin closed the stream before responding");
    }
    r.release_if_closed(st);
    return 0;
  }

  // Body bytes leave our buffer; the sender's window reopens only now.
  static ssize_t read_request_body(nghttp2_session*, int32_t, uint8_t* buf, size_t length,
                                   uint32_t* flags, nghttp2_data_source* src, void* ud) {
    H2Relay& r = relay(ud);
    auto* st = static_cast<Stream*>(src->ptr);
    std::size_t n = std::min(length, st->req_body.size() - st->req_off);
    if (n > 0) {
      std::memcpy(buf, st->req_body.data() + st->req_off, n);
      st->req_off += n;
      r.credit(Side::client, *st, n);
      if (st->req_off == st->req_body.size()) {
        st->req_body.clear();
        st->req_off = 0;
      }
    }
    if (st->req_off == st->req_body.size() && st->req_end) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      if (!st->req_trailers.empty()) {
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        auto nv = to_nv(st->req_trailers);
        nghttp2_submit_trailer(r.up_, st->up_id, nv.data(), nv.size());
      }
      return static_cast<ssize_t>(n);
    }
    return n > 0 ? static_cast<ssize_t>(n) : static_cast<ssize_t>(NGHTTP2_ERR_DEFERRED);
  }

  static ssize_t read_response_body(nghttp2_session*, int32_t, uint8_t* buf, size_t length,
                                    uint32_t* flags, nghttp2_data_source* src, void* ud) {
    H2Relay& r = relay(ud);
    auto* st = static_cast<Stream*>(src->ptr);
    std::size_t n = std::min(length, st->resp_body.size() - st->resp_off);
    if (n > 0) {
      std::memcpy(buf, st->resp_body.data() + st->resp_off, n);
      st->resp_off += n;
      if (st->up_id > 0 && !st->synthetic) r.credit(Side::upstream, *st, n);
      if (st->resp_off == st->resp_body.size()) {
        st->resp_body.clear();
        st->resp_off = 0;
      }
    }
    if (st->resp_off == st->resp_body.size() && st->resp_end) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      if (!st->resp_trailers.empty()) {
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        auto nv = to_nv(st->resp_trailers);
        nghttp2_submit_trailer(r.down_, st->down_id, nv.data(), nv.size());
      }
      return static_cast<ssize_t>(n);
    }
    return n > 0 ? static_cast<ssize_t>(n) : static_cast<ssize_t>(NGHTTP2_ERR_DEFERRED);
  }
};

H2Relay::H2Relay(RelayIo& io, exchange::Consumer& consumer,
                 std::shared_ptr<const exchange::ConnectionInfo> connection, H2Settings settings,
                 std::size_t output_high_watermark, std::optional<Refusal> refusal,
                 IcapOptions icap)
    : io_(io),
      consumer_(consumer),
      connection_(std::move(connection)),
      settings_(settings),
      high_watermark_(output_high_watermark),
      refusal_(std::move(refusal)),
      upstream_ended_(refusal_.has_value()),
      headers_wanted_(consumer_.wants_headers(*connection_)),
      icap_(std::move(icap)) {
  // A rule's `hooks` list selects ICAP like any hook (absent: all traffic).
  const auto& hooks = connection_->hooks;
  if (refusal_ || !icap_.service ||
      (hooks && std::find(hooks->begin(), hooks->end(), "icap") == hooks->end()))
    icap_.reqmod = icap_.respmod = false;
}

H2Relay::~H2Relay() {
  // Exchanges still open when the connection goes are aborted, so every
  // request_head has its ending.
  for (auto& [id, st] : streams_)
    if (!st->done_reported) consumer_.on_abort(st->ex, "connection closed");
  nghttp2_session_del(down_);
  nghttp2_session_del(up_);
}

bool H2Relay::start() {
  nghttp2_session_callbacks* cbs = nullptr;
  nghttp2_option* opt = nullptr;
  if (nghttp2_session_callbacks_new(&cbs) != 0 || nghttp2_option_new(&opt) != 0) {
    nghttp2_session_callbacks_del(cbs);
    io_.fail("nghttp2: out of memory");
    return false;
  }
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, Callbacks::on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, Callbacks::on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, Callbacks::on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, Callbacks::on_data_chunk);
  nghttp2_session_callbacks_set_on_frame_send_callback(cbs, Callbacks::on_frame_send);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, Callbacks::on_stream_close);
  // Window updates follow what has been passed on, not what has arrived.
  nghttp2_option_set_no_auto_window_update(opt, 1);
  nghttp2_option_set_max_deflate_dynamic_table_size(opt, settings_.header_table_size);
  nghttp2_option_set_max_send_header_block_length(opt, settings_.max_header_list_size + 1024);
  int rc_down = nghttp2_session_server_new2(&down_, cbs, this, opt);
  int rc_up = nghttp2_session_client_new2(&up_, cbs, this, opt);
  nghttp2_session_callbacks_del(cbs);
  nghttp2_option_del(opt);
  if (rc_down != 0 || rc_up != 0) {
    io_.fail("nghttp2: cannot create sessions");
    return false;
  }
  nghttp2_settings_entry down_settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, settings_.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, settings_.initial_window_size},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, settings_.max_header_list_size},
      {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, settings_.header_table_size},
  };
  nghttp2_settings_entry up_settings[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, settings_.initial_window_size},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, settings_.max_header_list_size},
      {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, settings_.header_table_size},
  };
  if (nghttp2_submit_settings(down_, NGHTTP2_FLAG_NONE, down_settings, std::size(down_settings)) != 0 ||
      nghttp2_submit_settings(up_, NGHTTP2_FLAG_NONE, up_settings, std::size(up_settings)) != 0 ||
      nghttp2_session_set_local_window_size(down_, NGHTTP2_FLAG_NONE, 0,
                                            static_cast<int32_t>(settings_.connection_window_size)) != 0 ||
      nghttp2_session_set_local_window_size(up_, NGHTTP2_FLAG_NONE, 0,
                                            static_cast<int32_t>(settings_.connection_window_size)) != 0) {
    io_.fail("nghttp2: cannot submit SETTINGS");
    return false;
  }
  flush();
  return true;
}

// Hands flow-control window back to the sender of `n` bytes that have been
// passed on (or dropped). The stream may be closed on the sender's side by
// then (its END_STREAM arrived first): the connection window must still be
// returned, or every finished response leaks its size from it until the
// connection stalls.
void H2Relay::give_back(Side sender, const Stream& st, std::size_t n) {
  nghttp2_session* s = session(sender);
  bool closed = sender == Side::client ? st.down_closed : st.up_closed;
  std::int32_t id = sender == Side::client ? st.down_id : st.up_id;
  if (!closed && id > 0) {
    nghttp2_session_consume(s, id, n);
  } else {
    nghttp2_session_consume_connection(s, n);
  }
}

H2Relay::Stream* H2Relay::by_down(std::int32_t id) {
  auto it = streams_.find(id);
  return it == streams_.end() ? nullptr : it->second.get();
}

H2Relay::Stream* H2Relay::by_up(std::int32_t id) {
  auto it = up_index_.find(id);
  return it == up_index_.end() ? nullptr : it->second;
}

void H2Relay::submit_request(Stream& st) {
  if (refusal_) {
    st.req_head.clear();
    st.up_closed = true;
    answer_error(st, refusal_->status, refusal_->reason);
    return;
  }
  bool end_stream = st.req_end && st.req_body.size() == st.req_off && st.req_trailers.empty();
  auto nv = to_nv(st.req_head);
  nghttp2_data_provider prd{};
  prd.source.ptr = &st;
  prd.read_callback = Callbacks::read_request_body;
  std::int32_t id = nghttp2_submit_request(up_, nullptr, nv.data(), nv.size(),
                                           end_stream ? nullptr : &prd, nullptr);
  st.req_head.clear();
  if (id < 0) {
    st.up_closed = true;
    answer_error(st, 502, std::string("cannot forward request: ") + nghttp2_strerror(id));
    return;
  }
  st.up_id = id;
  up_index_[id] = &st;
}

void H2Relay::submit_response(Stream& st) {
  if (st.down_closed) return;
  bool end_stream = st.resp_end && st.resp_body.size() == st.resp_off && st.resp_trailers.empty();
  auto nv = to_nv(st.resp_head);
  nghttp2_data_provider prd{};
  prd.source.ptr = &st;
  prd.read_callback = Callbacks::read_response_body;
  int rc = nghttp2_submit_response(down_, st.down_id, nv.data(), nv.size(),
                                   end_stream ? nullptr : &prd);
  st.resp_head.clear();
  if (rc == 0) st.resp_head_sent = true;
}

// The proxy's own answer on a stream whose origin side failed before a
// response head was relayed.
void H2Relay::answer_error(Stream& st, int status, const std::string& reason) {
  if (st.down_closed || st.resp_head_sent) return;
  // A held message is dropped: its verdict, if one comes, is ignored.
  st.req_held = st.resp_held = false;
  std::size_t unsent = st.resp_body.size() - st.resp_off;
  if (unsent && st.up_id > 0 && !st.synthetic) credit(Side::upstream, st, unsent);
  st.resp_prepaid = 0;
  st.synthetic = true;
  st.ex.status = status;
  st.resp_body = "sightline: " + reason + "\n";
  st.resp_off = 0;
  st.resp_end = true;
  st.resp_trailers.clear();
  std::string status_text = std::to_string(status);
  std::string length = std::to_string(st.resp_body.size());
  st.resp_head = {{":status", status_text},
                   {"content-type", "text/plain; charset=utf-8"},
                   {"content-length", length},
                   {"cache-control", "no-store"}};
  if (!st.done_reported) {
    st.done_reported = true;
    consumer_.on_abort(st.ex, reason);
  }
  submit_response(st);
}

// n body bytes left our buffer (sent on, or dropped): the sender gets window
// for those not already handed back while they were held.
void H2Relay::credit(Side sender, Stream& st, std::size_t n) {
  settle(sender, st);
  std::size_t& pre = sender == Side::client ? st.req_prepaid : st.resp_prepaid;
  std::size_t k = std::min(pre, n);
  pre -= k;
  if (n > k) give_back(sender, st, n - k);
}

// n more bytes of a held body arrived. Up to icap.max_body their window goes
// back at once (the sender could not finish a body larger than its window
// otherwise); past it the hold ends: what is held goes on as it is and the
// rest streams unadapted, under the usual end-to-end flow control.
void H2Relay::hold_data(Side sender, Stream& st, std::size_t n) {
  const std::string& body = sender == Side::client ? st.req_body : st.resp_body;
  if (body.size() > icap_.max_body) {
    give_up_hold(sender, st);
    return;
  }
  // All streams together hold at most a budget of credited bytes; beyond
  // it a stream's own window stays closed until others' verdicts free room.
  // The oldest stream still receiving is always credited, so some stream
  // can always finish its body and reach a verdict (no cross-stream stall).
  if (held_paid(sender) <= held_budget() || oldest_receiving(sender) == &st) {
    give_back(sender, st, n);
    (sender == Side::client ? st.req_prepaid : st.resp_prepaid) += n;
  } else {
    nghttp2_session_consume_connection(session(sender), n);
    (sender == Side::client ? st.req_unpaid : st.resp_unpaid) += n;
  }
}

std::size_t H2Relay::held_budget() const {
  return static_cast<std::size_t>(2 * icap_.max_body);
}

// Bytes held for ICAP in `sender`'s direction whose window went back.
std::size_t H2Relay::held_paid(Side sender) const {
  std::size_t sum = 0;
  for (const auto& [id, st] : streams_) {
    if (sender == Side::client && st->req_held)
      sum += st->req_body.size() - st->req_off - st->req_unpaid;
    else if (sender == Side::upstream && st->resp_held)
      sum += st->resp_body.size() - st->resp_off - st->resp_unpaid;
  }
  return sum;
}

H2Relay::Stream* H2Relay::oldest_receiving(Side sender) const {
  Stream* best = nullptr;
  for (const auto& [id, st] : streams_) {
    bool receiving = sender == Side::client ? st->req_held && !st->req_end
                                            : st->resp_held && !st->resp_end;
    if (receiving && (!best || st->down_id < best->down_id)) best = st.get();
  }
  return best;
}

// Withheld stream window goes back: the bytes now count as credited.
void H2Relay::settle(Side sender, Stream& st) {
  std::size_t& un = sender == Side::client ? st.req_unpaid : st.resp_unpaid;
  if (un == 0) return;
  bool closed = sender == Side::client ? st.down_closed : st.up_closed;
  std::int32_t id = sender == Side::client ? st.down_id : st.up_id;
  if (!closed && id > 0) nghttp2_session_consume_stream(session(sender), id, un);
  (sender == Side::client ? st.req_prepaid : st.resp_prepaid) += un;
  un = 0;
}

// Streams whose window was withheld get it back while the budget allows
// (after verdicts freed room); outside nghttp2 callbacks, before sending.
void H2Relay::wake_held() {
  for (Side sender : {Side::client, Side::upstream}) {
    std::size_t paid = held_paid(sender);
    Stream* oldest = oldest_receiving(sender);
    for (auto& [id, st] : streams_) {
      std::size_t un = sender == Side::client ? st->req_unpaid : st->resp_unpaid;
      if (un == 0) continue;
      if (paid + un > held_budget() && st.get() != oldest) continue;
      settle(sender, *st);
      paid += un;
    }
  }
}

void H2Relay::bypass_too_large(Stream& st, icap::Method m) { icap_.report_too_large(st.ex, m); }

void H2Relay::give_up_hold(Side sender, Stream& st) {
  bool req = sender == Side::client;
  bypass_too_large(st, req ? icap::Method::reqmod : icap::Method::respmod);
  if (req) {
    st.req_held = false;
    submit_request(st);
  } else {
    st.resp_held = false;
    submit_response(st);
  }
}

void H2Relay::send_reqmod(Stream& st) {
  if (st.req_icap) return;
  st.req_icap = true;
  send_to_icap(st, std::nullopt, st.req_body);
}

void H2Relay::send_respmod(Stream& st) {
  if (st.resp_icap) return;
  st.resp_icap = true;
  send_to_icap(st, to_event_head(st.resp_head, false), st.resp_body);
}

void H2Relay::send_to_icap(Stream& st, std::optional<exchange::Head> response, std::string body) {
  bool req = !response;
  // An unavailable service answers at once, inside an nghttp2 callback:
  // the caller sends afterwards. Later answers come from the loop.
  auto in_call = std::make_shared<bool>(true);
  std::weak_ptr<bool> alive = alive_;
  auto done = [this, alive, in_call, req, id = st.down_id](icap::Result r) {
    if (alive.expired()) return;
    if (req) reqmod_done(id, std::move(r));
    else respmod_done(id, std::move(r));
    if (!*in_call) after_callback();
  };
  icap_.adapt(st.ex.id, req ? to_event_head(st.req_head, true) : st.req_event, std::move(response),
              std::move(body), std::move(done));
  *in_call = false;
}

// Frames queued from an ICAP answer (outside any socket callback) go out now.
void H2Relay::after_callback() {
  if (failed_) return;
  flush();
  check_done();
  io_.flush_sends();
}

void H2Relay::reqmod_done(std::int32_t id, icap::Result r) {
  Stream* st = by_down(id);
  icap_.report(st ? &st->ex : nullptr, icap::Method::reqmod, r);
  // The stream may have been reset or answered meanwhile: nothing to do.
  if (failed_ || !st || !st->req_held || st->down_closed) return;
  st->req_held = false;
  using K = icap::Result::Kind;
  switch (r.kind) {
    case K::unchanged:
      break;
    case K::modified: {
      bool had_body = st->req_body.size() > st->req_off || !field(st->req_head, "content-length").empty();
      HeaderPairs h;
      h.emplace_back(":method", r.head.method.empty() ? field(st->req_head, ":method") : r.head.method);
      h.emplace_back(":scheme", r.head.scheme.empty() ? field(st->req_head, ":scheme") : r.head.scheme);
      h.emplace_back(":authority",
                     r.head.authority.empty() ? field(st->req_head, ":authority") : r.head.authority);
      h.emplace_back(":path", r.head.target.empty() ? field(st->req_head, ":path") : r.head.target);
      append_fields(h, r.head.headers, r.body.size(), r.has_body || !r.body.empty() || had_body);
      // The original body is replaced; its window went back while it was held.
      credit(Side::client, *st, st->req_body.size() - st->req_off);
      st->req_head = std::move(h);
      st->req_body = std::move(r.body);
      st->req_off = 0;
      st->req_prepaid = st->req_body.size();  // not the client's bytes: never credited
      st->req_trailers.clear();
      break;
    }
    case K::respond: {
      log::emit(log::Line(log::Level::info, "icap_respond").num("exchange", st->ex.id)
                    .num("status", r.head.status));
      st->up_closed = true;  // never opened
      std::size_t unsent = st->req_body.size() - st->req_off;
      if (unsent) credit(Side::client, *st, unsent);
      st->req_body.clear();
      st->req_off = 0;
      bool no_body = st->head_request || r.head.status == 204 || r.head.status == 304;
      st->synthetic = true;
      st->ex.status = r.head.status;
      st->ex.timing.response_head_in = Clock::now();
      st->resp_head = {{":status", std::to_string(r.head.status)}};
      append_fields(st->resp_head, r.head.headers, r.body.size(),
                    r.head.status != 204 && r.head.status != 304);
      st->resp_body = no_body ? std::string() : std::move(r.body);
      st->resp_off = 0;
      st->resp_end = true;
      consumer_.on_response_head(st->ex, r.head);
      submit_response(*st);
      return;
    }
    case K::error: {  // a fail-closed service failed
      st->up_closed = true;
      answer_error(*st, 502, "ICAP service failed: " + r.error);
      std::size_t unsent = st->req_body.size() - st->req_off;
      if (unsent) credit(Side::client, *st, unsent);
      st->req_body.clear();
      st->req_off = 0;
      return;
    }
  }
  submit_request(*st);
}

void H2Relay::respmod_done(std::int32_t id, icap::Result r) {
  Stream* st = by_down(id);
  icap_.report(st ? &st->ex : nullptr, icap::Method::respmod, r);
  if (failed_ || !st || !st->resp_held || st->down_closed) return;
  st->resp_held = false;
  using K = icap::Result::Kind;
  switch (r.kind) {
    case K::unchanged:
      break;
    case K::modified:
    case K::respond: {
      bool no_body = st->head_request || r.head.status == 204 || r.head.status == 304 ||
                     r.head.status < 200;
      HeaderPairs h{{":status", std::to_string(r.head.status >= 200 ? r.head.status : 502)}};
      append_fields(h, r.head.headers, r.body.size(), r.head.status != 204 && r.head.status != 304);
      credit(Side::upstream, *st, st->resp_body.size() - st->resp_off);
      st->resp_head = std::move(h);
      st->resp_body = no_body ? std::string() : std::move(r.body);
      st->resp_off = 0;
      st->resp_prepaid = st->resp_body.size();  // not the origin's bytes: never credited
      st->resp_trailers.clear();
      st->ex.status = r.head.status;
      break;
    }
    case K::error:
      // A fail-closed service failed. Only this stream: the origin's
      // response is replaced by an error.
      answer_error(*st, 502, "ICAP service failed: " + r.error);
      return;
  }
  submit_response(*st);
}

void H2Relay::release_if_closed(Stream* st) {
  if (!st->down_closed || !(st->up_closed || st->up_id < 0)) return;
  if (st->up_id > 0) up_index_.erase(st->up_id);
  streams_.erase(st->down_id);
}

void H2Relay::on_data(Side from, std::span<const char> data) {
  if (failed_) return;
  nghttp2_session* s = session(from);
  ssize_t rc = nghttp2_session_mem_recv(s, reinterpret_cast<const uint8_t*>(data.data()), data.size());
  if (rc < 0) {
    // nghttp2 has queued a GOAWAY for the offender; send it, then stop.
    std::string why = std::string("HTTP/2 protocol error from ") + side_name(from) + ": " +
                      nghttp2_strerror(static_cast<int>(rc));
    io_.note_failure(from == Side::client ? core::FailureCause::client_bad_request
                                          : core::FailureCause::upstream_protocol);
    io_.set_close_reason(why);
    flush();
    failed_ = true;
    io_.stop_reading(Side::client);
    io_.stop_reading(Side::upstream);
    io_.end(Side::client, true);
    io_.end(Side::upstream, true);
    return;
  }
  flush();
  check_done();
}

void H2Relay::on_end(Side from, bool clean) {
  if (failed_) return;
  if (from == Side::client) {
    client_ended_ = true;
    if (!clean) io_.set_close_reason("client closed without close_notify");
    // Nothing more can reach the client: cancel every origin stream.
    nghttp2_submit_goaway(up_, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, nullptr, 0);
    for (auto& [id, st] : streams_) {
      if (!st->done_reported) {
        st->done_reported = true;
        consumer_.on_abort(st->ex, "client closed the connection");
      }
      if (st->up_id > 0 && !st->up_closed)
        nghttp2_submit_rst_stream(up_, NGHTTP2_FLAG_NONE, st->up_id, NGHTTP2_CANCEL);
    }
    flush();
    io_.end(Side::client, clean);
    io_.stop_reading(Side::upstream);
    io_.end(Side::upstream, clean);
    return;
  }
  upstream_ended_ = true;
  if (!clean) io_.set_close_reason("upstream closed without close_notify");
  // Streams the origin left unanswered get an error; answered ones that were
  // cut short are reset.
  for (auto& [id, st] : streams_) {
    if (st->down_closed) continue;
    io_.note_failure(core::FailureCause::upstream_reset);
    st->up_closed = true;
    if (!st->resp_head_sent) {
      answer_error(*st, 502, "origin closed the connection before responding");
    } else if (!st->resp_end) {
      nghttp2_submit_rst_stream(down_, NGHTTP2_FLAG_NONE, st->down_id, NGHTTP2_INTERNAL_ERROR);
    }
  }
  nghttp2_submit_goaway(down_, NGHTTP2_FLAG_NONE, last_down_stream_, NGHTTP2_NO_ERROR, nullptr, 0);
  flush();
  check_done();
}

bool H2Relay::awaiting_origin() const {
  for (const auto& [id, st] : streams_)
    if (st->up_id > 0 && !st->resp_end && !st->down_closed) return true;
  return false;
}

void H2Relay::on_writable(Side) {
  if (failed_) return;
  flush();
  check_done();
}

// Serializes what both sessions have to send, but only while the target
// leg's queue is below the watermark: the rest stays in stream buffers (and
// in the sender's window) until the leg drains.
void H2Relay::flush() {
  if (icap_.reqmod || icap_.respmod) wake_held();
  // Sending on one session can open windows on the other (consumed request
  // bytes become WINDOW_UPDATEs for the client), so go round until neither
  // has anything more to say.
  bool progress = true;
  while (progress && !failed_) {
    progress = false;
    for (Side side : {Side::client, Side::upstream}) {
      nghttp2_session* s = session(side);
      if ((side == Side::client && client_ended_) || (side == Side::upstream && upstream_ended_))
        continue;
      while (io_.queued(side) < high_watermark_) {
        const uint8_t* out = nullptr;
        ssize_t n = nghttp2_session_mem_send(s, &out);
        if (n < 0) {
          failed_ = true;
          io_.fail(std::string("nghttp2: ") + nghttp2_strerror(static_cast<int>(n)));
          return;
        }
        if (n == 0) break;
        progress = true;
        io_.send(side, std::span<const char>(reinterpret_cast<const char*>(out), static_cast<std::size_t>(n)));
      }
    }
  }
}

// A session that wants neither to read nor to write is finished (after a
// GOAWAY exchange): its leg is ended cleanly.
void H2Relay::check_done() {
  if (!client_ended_ && !nghttp2_session_want_read(down_) && !nghttp2_session_want_write(down_)) {
    client_ended_ = true;
    io_.stop_reading(Side::client);
    io_.end(Side::client, true);
  }
  if (!upstream_ended_ && !nghttp2_session_want_read(up_) && !nghttp2_session_want_write(up_)) {
    upstream_ended_ = true;
    io_.stop_reading(Side::upstream);
    io_.end(Side::upstream, true);
  }
  // One side gone for good: the other has nothing left to relay once its
  // own queue is out.
  if (upstream_ended_ && !refusal_ && !client_ended_ && streams_.empty()) {
    client_ended_ = true;
    io_.stop_reading(Side::client);
    io_.end(Side::client, true);
  }
}

}  // namespace sightline::http
