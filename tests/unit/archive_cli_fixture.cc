// Writes a small sealed archive for archive_cli_test.sh (the proxy is not
// wired to the writer yet): archive_cli_fixture DIR KEY
// 20 exchanges, one a segment; users alternate asmith/jdoe; exchange 6 has a
// binary response body; exchanges 0, 4, 8, ... are answered 403.
#include "archive/keys.h"
#include "archive/segment.h"

#include <iostream>

using namespace sightline;
using namespace sightline::archive;

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: archive_cli_fixture DIR KEY\n";
    return 2;
  }
  std::string err;
  WriterOptions o;
  o.dir = argv[1];
  o.writer_id = "proxy1";
  o.max_bytes = 1000;
  o.sync = SyncMode::none;
  auto w = SegmentWriter::open(o, load_signing_key(argv[2], &err), nullptr, &err);
  if (!w) {
    std::cerr << err << "\n";
    return 1;
  }
  for (int i = 0; i < 20; ++i) {
    std::string host = i % 3 ? "api.bank.example" : "www.other.example";
    exchange::Head req;
    req.method = i % 2 ? "GET" : "POST";
    req.target = "/acct/" + std::to_string(i);
    req.version = "HTTP/1.1";
    req.headers = {{"Host", host}};
    exchange::Head resp;
    resp.status = i % 4 ? 200 : 403;
    resp.version = "HTTP/1.1";
    resp.headers = {{"Content-Type", "text/plain"}};
    ExchangeRecord ex;
    ex.target_uri = "https://" + host + "/acct/" + std::to_string(i);
    ex.request_http = http_request_block(req, "transfer=" + std::to_string(i * 100));
    ex.response_http = http_response_block(resp, i == 6 ? std::string("\x00\x01\x02", 3) : "ok " + std::to_string(i));
    ex.metadata_json = nlohmann::json({{"user", i % 2 ? "jdoe" : "asmith"}, {"client", "10.1.1.1:5000"}}).dump();
    ex.timestamp = WallClock::time_point(std::chrono::seconds(1795737600)) + std::chrono::hours(i);
    if (auto e = w->append(ex)) {
      std::cerr << *e << "\n";
      return 1;
    }
  }
  if (auto e = w->seal()) {
    std::cerr << *e << "\n";
    return 1;
  }
  return 0;
}
