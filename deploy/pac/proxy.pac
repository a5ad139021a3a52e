// sightline: proxy auto-configuration (PAC) file for explicit mode.
//
// Serve it over HTTP with the MIME type application/x-ns-proxy-autoconfig,
// e.g. http://pac.corp.example/proxy.pac, and point clients at it (browser
// or OS "automatic proxy configuration URL", Windows Group Policy, macOS and
// mobile MDM profiles), or publish it for WPAD as http://wpad.<domain>/wpad.dat
// (see docs/deployment.md). Clients also need the enterprise root
// certificate (docs/ca.md).
//
// The rule of thumb: internal destinations go DIRECT, everything else goes
// through sightline. Adjust PROXIES and the INTERNAL_* lists below.
//
// Written in ES3-compatible JavaScript (no trailing commas, no let/const)
// because some PAC engines (Windows WinHTTP) are old.
//
// Keep the function fast and free of DNS look-ups: the browser calls it for
// every request (modern browsers pass only scheme://host/ for https URLs,
// so decide by host). dnsResolve() and isInNet() on a NAME block the
// browser on a DNS query and fail in ways users cannot see; below, isInNet()
// is only ever given IP address literals.

// sightline instances, tried in order (the browser moves to the next one
// when one does not answer). One name behind a load balancer is fine too.
//
// No "DIRECT" fallback at the end on purpose: if every proxy is down,
// traffic fails instead of silently leaving uninspected and unarchived.
// Append "; DIRECT" only if availability matters more than inspection.
var PROXIES = "PROXY sightline1.corp.example:3128; PROXY sightline2.corp.example:3128";

// DNS suffixes of internal names (a leading dot: the domain and every name
// under it).
var INTERNAL_SUFFIXES = [
  ".corp.example",
  ".internal",
  ".local",      // mDNS
  ".localhost"
];

// Internal IPv4 networks (reached by IP address literal), as [net, mask].
var INTERNAL_V4 = [
  ["127.0.0.0", "255.0.0.0"],       // loopback
  ["10.0.0.0", "255.0.0.0"],        // RFC 1918
  ["172.16.0.0", "255.240.0.0"],    // RFC 1918
  ["192.168.0.0", "255.255.0.0"],   // RFC 1918
  ["169.254.0.0", "255.255.0.0"],   // link-local
  ["100.64.0.0", "255.192.0.0"]     // carrier-grade NAT (RFC 6598)
];

// Internal IPv6 prefixes (reached by IPv6 literal), compared as text on
// the lower-case address: loopback, unique local (fc00::/7), link-local.
var INTERNAL_V6_PREFIXES = ["::1", "fc", "fd", "fe80:"];

function FindProxyForURL(url, host) {
  host = host.toLowerCase();
  // Some browsers pass IPv6 literals in brackets.
  if (host.charAt(0) == "[") host = host.substring(1, host.length - 1);

  // Plain host names ("intranet", "printer"): internal by definition.
  if (isPlainHostName(host) || host == "localhost")
    return "DIRECT";

  // Internal domains.
  for (var i = 0; i < INTERNAL_SUFFIXES.length; i++) {
    var s = INTERNAL_SUFFIXES[i];
    if (dnsDomainIs(host, s) || host == s.substring(1))
      return "DIRECT";
  }

  // IPv4 literals: private, loopback and link-local networks go direct.
  if (/^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host)) {
    for (var j = 0; j < INTERNAL_V4.length; j++)
      if (isInNet(host, INTERNAL_V4[j][0], INTERNAL_V4[j][1]))
        return "DIRECT";
    return PROXIES;
  }

  // IPv6 literals.
  if (host.indexOf(":") >= 0) {
    for (var k = 0; k < INTERNAL_V6_PREFIXES.length; k++)
      if (host.indexOf(INTERNAL_V6_PREFIXES[k]) == 0)
        return "DIRECT";
    return PROXIES;
  }

  // Everything else (http, https, ws, wss to the internet) through
  // sightline: https as CONNECT, plain http as absolute-form requests.
  return PROXIES;
}
