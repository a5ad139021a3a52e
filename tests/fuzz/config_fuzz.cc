// libFuzzer target for the configuration parser (src/app/config.cc): any
// TOML text, as `sightline run -c FILE` reads it.
//
// Input: the file's text. A parse may fail, but only with a message that
// names the file, as "fuzz.toml:LINE:COLUMN: key '...': reason" does; it
// must never crash, throw or read out of bounds. A configuration that
// parses goes through the cross-field checks run at startup as well.
#include "app/config.h"
#include "fuzz_check.h"

#include <cstdint>

using sightline::fuzz::as_text;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  sightline::app::ConfigError err;
  const auto cfg = sightline::app::parse_config(as_text(data, size), "fuzz.toml", err);
  if (!cfg) {
    FUZZ_CHECK(err.message.starts_with("fuzz.toml"));
    return 0;
  }
  FUZZ_CHECK(cfg->source == "fuzz.toml");
  sightline::app::ConfigError invalid;
  if (!sightline::app::validate(*cfg, invalid)) FUZZ_CHECK(!invalid.message.empty());
  return 0;
}
