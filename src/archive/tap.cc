#include "archive/tap.h"

#include "core/log.h"
#include "hooks/event_json.h"

#include <algorithm>

namespace sightline::archive {

void ArchiveTap::finish(const exchange::Exchange& ex, bool complete, std::string_view reason) {
  if (!archived(ex)) return;
  auto rec = capture_.finish(ex, complete, reason);
  // The authority the exchange went to (HTTP/1.1 heads carry it in Host only).
  if (rec->request.authority.empty()) rec->request.authority = ex.authority;
  std::size_t size = rec->request_body.size() + rec->response_body.size() + 2048;
  const hooks::ExchangeRecord* captured = rec.get();  // kept alive by `rec` until written
  service_.submit([captured] { return to_archive_record(*captured); }, size, std::move(rec));
}

ExchangeRecord to_archive_record(const hooks::ExchangeRecord& rec) {
  const exchange::ConnectionInfo& c = *rec.connection;
  ExchangeRecord out;
  std::string scheme = !rec.request.scheme.empty() ? rec.request.scheme : c.client_tls.empty() ? "http" : "https";
  out.target_uri = scheme + "://" + rec.request.authority + rec.request.target;
  out.request_http = http_request_block(rec.request, rec.request_body);
  if (rec.has_response) out.response_http = http_response_block(rec.response, rec.response_body);
  out.request_store = body_incompressible(rec.request);
  out.response_store = rec.has_response && body_incompressible(rec.response);
  out.request_truncated = rec.request_body.size() < rec.request_body_bytes;
  out.response_truncated = rec.has_response && rec.response_body.size() < rec.response_body_bytes;
  // "addr:port" or "[v6]:port": the address alone.
  std::string_view server = c.server;
  if (auto colon = server.rfind(':'); colon != std::string_view::npos) server = server.substr(0, colon);
  if (server.size() >= 2 && server.front() == '[') server = server.substr(1, server.size() - 2);
  out.server_ip = std::string(server);
  // The event feed's object (it has user and groups) without the header
  // lists, which the request and response records hold verbatim, with what
  // only the archive records last. Formatted as text: no JSON tree.
  thread_local std::string extra;  // reused: no allocation per exchange
  extra.assign("\"upstream_cert_sha256\":\"");
  log::append_json_escaped(extra, c.upstream_cert_sha256);
  extra += "\",\"upstream_verdict\":\"";
  log::append_json_escaped(extra, c.upstream_verdict);
  extra += "\",\"request_truncated\":";
  extra += out.request_truncated ? "true" : "false";
  extra += ",\"response_truncated\":";
  extra += out.response_truncated ? "true" : "false";
  std::string& m = out.metadata_json;
  hooks::format_exchange(m, rec, 0, false, extra);
  if (!m.empty() && m.back() == '\n') m.pop_back();  // a record block, not a feed line
  out.timestamp = rec.start;
  return out;
}

}  // namespace sightline::archive
