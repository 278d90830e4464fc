package config

import (
	"net/url"
	"strings"
)

// validateServer checks the top-level server key: the URL of the drover
// control server whose deploy queue push deploys of this app share.
func (v *validator) validateServer(f *File) {
	if f.Server == "" {
		if v.present("$.server") {
			v.at("$.server", "is empty; give the control server's URL, like https://drover.internal:8700, or remove the key")
		}
		return
	}
	if msg := CheckServerURL(f.Server); msg != "" {
		v.at("$.server", "%s", msg)
	}
}

// CheckServerURL says what is wrong with u as a control server's URL (""
// when nothing): an http or https URL with a host, and nothing a token
// could hide in (no user info, query or fragment).
func CheckServerURL(u string) string {
	p, err := url.Parse(u)
	switch {
	case err != nil:
		return "\"" + u + "\" is not a URL: " + err.Error()
	case p.Scheme != "http" && p.Scheme != "https":
		return "\"" + u + "\" must start with https:// or http://, like https://drover.internal:8700"
	case p.Host == "":
		return "\"" + u + "\" names no host, like https://drover.internal:8700"
	case p.User != nil:
		return "\"" + u + "\" carries a user or password; give the token in DROVER_TOKEN instead, never in drover.yml"
	case p.RawQuery != "" || p.Fragment != "" || strings.Trim(p.Path, "/") != "":
		return "\"" + u + "\" has a path, query or fragment; give the server's base URL, like https://drover.internal:8700"
	}
	return ""
}
