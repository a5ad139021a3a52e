// `sightline archive ship DIR --s3 URL`: one pass of shipping sealed
// segments to S3 Object Lock storage (docs/archive-s3.md), for a cron job or
// by hand; the proxy's own shipper runs the same code.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <optional>

namespace sightline::app {

class ArchiveShipCli {
 public:
  explicit ArchiveShipCli(CLI::App* archive);
  ~ArchiveShipCli();
  // 0: every sealed segment is shipped; 1: some are left (errors printed);
  // 2: usage or setup errors. nullopt when `ship` was not given.
  std::optional<int> run() const;

  struct Flags;

 private:
  std::unique_ptr<Flags> f_;
};

}  // namespace sightline::app
