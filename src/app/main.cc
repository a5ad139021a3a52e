// sightline command line. CLI11 parses it (a Debian package, and its
// subcommand support fits `run` now and `policy`/`archive` later).
#include "app/config.h"
#include "app/server.h"
#include "core/log.h"
#include "sightline_build.h"

#include <CLI/CLI.hpp>

#include <csignal>
#include <iostream>
#include <sys/prctl.h>

namespace {

int do_run(const std::string& config_path, const std::vector<std::string>& listen,
           const std::string& ca_cert, const std::string& ca_key, const std::string& upstream_ca,
           int workers) {
  using namespace sightline;
  app::ConfigError err;
  std::optional<app::Config> cfg;
  if (!config_path.empty()) {
    cfg = app::load_config_file(config_path, err);
  } else {
    cfg = app::default_config();
  }
  if (!cfg) {
    std::cerr << "sightline: " << err.message << "\n";
    return 2;
  }
  if (!listen.empty() && !app::set_listen_addresses(*cfg, listen, err)) {
    std::cerr << "sightline: " << err.message << "\n";
    return 2;
  }
  if (!ca_cert.empty()) cfg->ca_cert = ca_cert;
  if (!ca_key.empty()) cfg->ca_key = ca_key;
  if (!upstream_ca.empty()) cfg->upstream_ca_file = upstream_ca;
  if (workers >= 0) cfg->workers = static_cast<unsigned>(workers);
  if (!app::validate(*cfg, err)) {
    std::cerr << "sightline: " << err.message << "\n";
    return 2;
  }
  log::Options lo;
  lo.file = cfg->log_file;
  lo.level = cfg->log_level == "debug"  ? log::Level::debug
             : cfg->log_level == "warn" ? log::Level::warn
             : cfg->log_level == "error" ? log::Level::error
                                         : log::Level::info;
  std::string why;
  if (!log::start(lo, &why)) {
    std::cerr << "sightline: " << why << "\n";
    return 2;
  }
  int rc = app::run_server(*cfg);
  log::stop();
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  // Keys in memory must not end up in a core file.
  prctl(PR_SET_DUMPABLE, 0);
  std::signal(SIGPIPE, SIG_IGN);

  CLI::App cli{"sightline: TLS-intercepting egress proxy"};
  cli.require_subcommand(1);
  cli.set_version_flag("--version", SIGHTLINE_VERSION);

  std::string config_path, ca_cert, ca_key, upstream_ca;
  std::vector<std::string> listen;
  int workers = -1;
  auto* run = cli.add_subcommand("run", "run the proxy");
  run->add_option("-c,--config", config_path, "TOML configuration file")->check(CLI::ExistingFile);
  run->add_option("--listen", listen, "explicit-proxy listener ADDR:PORT (repeatable; replaces [[listener]])");
  run->add_option("--ca-cert", ca_cert, "issuing CA certificate (PEM, chain after it)");
  run->add_option("--ca-key", ca_key, "issuing CA private key (PEM, mode 0600)");
  run->add_option("--upstream-ca", upstream_ca, "trust store for origin certificates (PEM)");
  run->add_option("--workers", workers, "worker threads (0 = one per core)")->check(CLI::Range(0, 256));

  auto* version = cli.add_subcommand("version", "print the version");

  CLI11_PARSE(cli, argc, argv);
  if (version->parsed()) {
    std::cout << "sightline " << SIGHTLINE_VERSION << "\n";
    return 0;
  }
  return do_run(config_path, listen, ca_cert, ca_key, upstream_ca, workers);
}
