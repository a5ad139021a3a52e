// Feeds archived connections' HTTP exchanges to the compliance archive.
//
// ArchiveTap is an exchange::Consumer in the server's Fanout. For
// connections whose ConnectionInfo says `archive`, it keeps each exchange's
// heads and bodies (each body up to `max_body`; what is cut is recorded as
// truncated in the WARC record) until the exchange ends, then queues it on
// the ArchiveService. Nothing is dropped here: unlike the hook bus's
// exchange records there is no tracking limit; memory is bounded by the
// archived exchanges in flight times 2 × max_body, and by the service's
// queue with back-pressure (see service.h).
//
#pragma once

#include "archive/service.h"
#include "exchange/exchange.h"
#include "hooks/events.h"
#include "hooks/exchange_tap.h"

#include <cstdint>
#include <span>
#include <string_view>

namespace sightline::archive {

struct TapOptions {
  std::size_t max_body = 16ull << 20;  // per body
};

class ArchiveTap final : public exchange::Consumer {
 public:
  ArchiveTap(ArchiveService& service, TapOptions opts) : service_(service), capture_({SIZE_MAX, opts.max_body}) {}

  void on_request_head(const exchange::Exchange& ex, const exchange::Head& head) override {
    if (archived(ex)) capture_.start(ex, head);
  }
  bool wants_headers(const exchange::ConnectionInfo& connection) const override { return connection.archive; }
  void on_body(const exchange::Exchange& ex, exchange::Direction dir, std::span<const char> data) override {
    if (archived(ex)) capture_.body(ex, dir, data);
  }
  void on_request_end(const exchange::Exchange&, const exchange::Headers&) override {}
  void on_response_head(const exchange::Exchange& ex, const exchange::Head& head) override {
    if (archived(ex)) capture_.response_head(ex, head);
  }
  void on_response_end(const exchange::Exchange& ex, const exchange::Headers&) override { finish(ex, true, {}); }
  void on_abort(const exchange::Exchange& ex, std::string_view reason) override { finish(ex, false, reason); }

 private:
  static bool archived(const exchange::Exchange& ex) { return ex.connection && ex.connection->archive; }
  void finish(const exchange::Exchange& ex, bool complete, std::string_view reason);

  ArchiveService& service_;
  hooks::ExchangeCapture capture_;
};

// The WARC exchange for an ended exchange record: HTTP/1.1-style request and
// response blocks, and as metadata the event feed's exchange object (docs/
// hooks.md) plus user, groups and the origin certificate's SHA-256 and
// verdict.
ExchangeRecord to_archive_record(const hooks::ExchangeRecord& rec);

}  // namespace sightline::archive
