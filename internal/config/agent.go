package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/parser"
)

// Agent is the configuration of `drover agent`: which server it follows
// and which apps it keeps deployed on this node.
type Agent struct {
	Path      string     `yaml:"-"`
	Server    string     `yaml:"server"`
	JoinToken string     `yaml:"join_token"`
	Token     string     `yaml:"token"`
	CAFile    string     `yaml:"ca_file"`
	StateDir  string     `yaml:"state_dir"`
	Node      string     `yaml:"node"`
	Apps      []AgentApp `yaml:"apps"`
}

// AgentApp is one app an agent keeps at the release the server says.
type AgentApp struct {
	App      string   `yaml:"app"`
	Env      string   `yaml:"env"`
	Repo     string   `yaml:"repo"`
	DeployTo string   `yaml:"deploy_to"`
	Roles    []string `yaml:"roles"`
}

// LoadAgent reads and validates an agent configuration file.
func LoadAgent(file string) (*Agent, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, &Error{File: file, Msg: "no such file; write one (see README: drover agent)"}
		}
		return nil, err
	}
	astFile, err := parser.ParseBytes(data, 0)
	if err != nil {
		return nil, yamlError(file, err)
	}
	if len(astFile.Docs) == 0 || astFile.Docs[0].Body == nil {
		return nil, &Error{File: file, Line: 1, Msg: "file is empty; it needs server, state_dir and apps"}
	}
	var a Agent
	if err := yaml.NodeToValue(astFile.Docs[0].Body, &a, yaml.DisallowUnknownField()); err != nil {
		e := yamlError(file, err)
		if ce, ok := e.(*Error); ok {
			locate(astFile, err, ce)
		}
		return nil, e
	}
	a.Path = file
	v := validator{file: file, ast: astFile}
	if a.Server == "" {
		v.at("$", "missing required key server (like http://drover.internal:8700)")
	} else if !strings.HasPrefix(a.Server, "http://") && !strings.HasPrefix(a.Server, "https://") {
		v.at("$.server", "%q must start with http:// or https://", a.Server)
	}
	if a.StateDir == "" {
		a.StateDir = "/var/lib/drover"
	}
	if a.Node == "" {
		a.Node, _ = os.Hostname()
	}
	if len(a.Apps) == 0 {
		v.at("$", "missing required key apps (at least one {app, env, repo, deploy_to})")
	}
	seen := map[string]int{}
	for i, app := range a.Apps {
		p := fmt.Sprintf("$.apps[%d]", i)
		switch {
		case app.App == "":
			v.at(p, "missing required key app")
		case !nameRE.MatchString(app.App):
			v.at(p+".app", "%q is not a valid app name", app.App)
		}
		if app.Env == "" {
			v.at(p, "missing required key env")
		}
		if app.Repo == "" {
			v.at(p, "missing required key repo")
		}
		if !path.IsAbs(app.DeployTo) || path.Clean(app.DeployTo) == "/" {
			v.at(p, "deploy_to must be an absolute path below /, got %q", app.DeployTo)
		}
		key := app.App + "/" + app.Env
		if prev, dup := seen[key]; dup {
			v.at(p, "app %s env %s is already listed at apps[%d]", app.App, app.Env, prev)
		}
		seen[key] = i
	}
	if len(v.errs) > 0 {
		return nil, v.errs
	}
	return &a, nil
}

// PlainHTTP reports whether the agent talks to its server in clear text over
// the network: an http:// server that is not on this machine (localhost or
// a loopback address). Its tokens and the releases it deploys can then be
// read and changed on the way.
func (a *Agent) PlainHTTP() bool {
	u, err := url.Parse(a.Server)
	if err != nil || u.Scheme != "http" {
		return false
	}
	host := u.Hostname()
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return false
	}
	ip := net.ParseIP(host)
	return ip == nil || !ip.IsLoopback()
}
