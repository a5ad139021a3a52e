#include "app/archive_ship_cli.h"

#include "archive/format.h"
#include "archive/ship.h"

#include <nlohmann/json.hpp>

#include <iostream>

namespace sightline::app {

struct ArchiveShipCli::Flags {
  std::string dir, url, node_id, lock_mode = "compliance", credentials_file, region = "us-east-1", ca_file;
  unsigned retention_days = 0;
  std::uint64_t retain_seconds = 0;
  std::uint64_t multipart_threshold = 64ull << 20, part_size = 16ull << 20;
  bool legal_hold = false, virtual_host = false;
  CLI::App* ship = nullptr;
};

ArchiveShipCli::ArchiveShipCli(CLI::App* arch) : f_(std::make_unique<Flags>()) {
  Flags& f = *f_;
  f.ship = arch->add_subcommand("ship", "upload sealed segments to S3 under Object Lock; journaled, idempotent");
  f.ship->add_option("dir", f.dir, "archive directory")->required();
  f.ship->add_option("--s3", f.url, "http(s)://host[:port]/bucket[/prefix] (path style)")->required();
  f.ship->add_option("--node-id", f.node_id, "key component for this proxy (default: the segments' writer id)");
  f.ship->add_option("--lock-mode", f.lock_mode, "compliance (default), governance, or none")
      ->check(CLI::IsMember({"compliance", "governance", "none"}));
  f.ship->add_option("--retention-days", f.retention_days, "retain until seal time + this many days");
  f.ship->add_option("--retain-seconds", f.retain_seconds, "retain until seal time + this many seconds (tests)");
  f.ship->add_flag("--legal-hold", f.legal_hold, "place a legal hold on every object");
  f.ship->add_option("--credentials-file", f.credentials_file,
                     "access key and secret (two lines, or aws_access_key_id/aws_secret_access_key); "
                     "default: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY");
  f.ship->add_option("--region", f.region, "SigV4 region (default us-east-1)");
  f.ship->add_option("--ca-file", f.ca_file, "CA bundle for an https endpoint (default: the system's)");
  f.ship->add_flag("--virtual-host", f.virtual_host, "bucket in the host name instead of the path");
  f.ship->add_option("--multipart-threshold", f.multipart_threshold, "bytes; larger files use multipart upload")
      ->check(CLI::Range(std::uint64_t{5} << 20, std::uint64_t{5} << 30));
  f.ship->add_option("--part-size", f.part_size, "multipart part size in bytes (at least 5 MiB)")
      ->check(CLI::Range(std::uint64_t{5} << 20, std::uint64_t{5} << 30));
}

ArchiveShipCli::~ArchiveShipCli() = default;

std::optional<int> ArchiveShipCli::run() const {
  const Flags& f = *f_;
  if (!f.ship->parsed()) return std::nullopt;
  std::string why;
  auto target = archive::s3::parse_target(f.url, f.virtual_host, &why);
  if (!target) {
    std::cerr << "sightline: --s3 " << f.url << ": " << why << "\n";
    return 2;
  }
  auto creds = archive::s3::resolve_credentials("", "", f.credentials_file, &why);
  if (!creds) {
    std::cerr << "sightline: " << why << "\n";
    return 2;
  }
  archive::s3::ClientOptions co;
  co.target = *target;
  co.credentials = *creds;
  co.region = f.region;
  co.ca_file = f.ca_file;
  archive::s3::Client client(co);
  auto journal = archive::ShipJournal::open(f.dir, &why);
  if (!journal) {
    std::cerr << "sightline: " << why << "\n";
    return 2;
  }
  if (journal->cut_bytes())
    std::cerr << "sightline: " << journal->path() << ": cut a torn last line (" << journal->cut_bytes()
              << " bytes)\n";
  if (!f.node_id.empty() && (!archive::valid_writer_id(f.node_id) || f.node_id == "." || f.node_id == "..")) {
    std::cerr << "sightline: --node-id " << f.node_id << ": letters, digits, '_' and '.' only\n";
    return 2;
  }
  archive::ShipOptions so;
  so.dir = f.dir;
  so.node_id = f.node_id;
  if (f.lock_mode == "none") so.lock_mode.reset();
  else if (f.lock_mode == "governance") so.lock_mode = archive::s3::LockMode::governance;
  so.retention = f.retain_seconds ? std::chrono::seconds(f.retain_seconds)
                                  : std::chrono::seconds(std::int64_t{f.retention_days} * 86400);
  if (so.lock_mode && so.retention.count() == 0) {
    std::cerr << "sightline: --lock-mode " << f.lock_mode
              << " needs --retention-days (or --retain-seconds); --lock-mode none relies on the bucket's default "
                 "retention\n";
    return 2;
  }
  so.legal_hold = f.legal_hold;
  so.multipart_threshold = f.multipart_threshold;
  so.part_size = f.part_size;
  archive::ShipReport rep = archive::ship_sealed(so, client, *journal);
  for (const auto& s : rep.shipped) {
    nlohmann::ordered_json j = {{"segment", s.segment}, {"file", s.file},         {"key", s.key},
                                {"version_id", s.version_id}, {"sha256", s.sha256}, {"size", s.size},
                                {"retain_until", s.retain_until}, {"adopted", s.adopted}};
    std::cout << j.dump() << "\n";
  }
  for (const auto& e : rep.errors) std::cerr << "sightline: ship: " << e << "\n";
  std::cerr << "sightline: shipped " << rep.done_segments.size() << " segment(s) to "
            << archive::s3::to_string(*target) << "; backlog " << rep.backlog_segments << " segment(s), "
            << rep.backlog_bytes << " bytes\n";
  return rep.errors.empty() && rep.backlog_segments == 0 ? 0 : 1;
}

}  // namespace sightline::app
