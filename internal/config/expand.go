package config

import (
	"strings"

	"github.com/goccy/go-yaml/ast"
)

// maxNodes bounds the size of a drover.yml with its aliases expanded, so
// that a few lines of nested aliases (a "billion laughs") cannot make
// drover decode for ever.
const maxNodes = 100_000

// expand returns n with every alias replaced by what its anchor names and
// every merge key (<<) replaced by the keys it merges, so that the decoder,
// the hook order and the error positions all see one plain tree. YAML's
// rules: keys written beside << win over merged ones, and in a list of
// merged mappings the earlier mapping wins. Merged keys take the place of
// the << line; a merged key also written beside it keeps the written place.
//
// Nodes are never changed in place: a node reached through two aliases is
// shared, read-only, and decoded once per place it appears.
func expand(n ast.Node) (ast.Node, error) {
	x := &expander{anchors: map[string]anchor{}}
	return x.node(n)
}

type expander struct {
	anchors map[string]anchor
	nodes   int // nodes of the expanded tree so far
}

// anchor is what an anchor names, and its size expanded.
type anchor struct {
	node  ast.Node
	nodes int
}

func (x *expander) node(n ast.Node) (ast.Node, error) {
	x.nodes++
	if x.nodes > maxNodes {
		return nil, &nodeError{node: n, msg: "the file is too large with its aliases expanded; use fewer nested aliases"}
	}
	switch n := n.(type) {
	case nil:
		return nil, nil
	case *ast.AnchorNode:
		before := x.nodes
		v, err := x.node(n.Value)
		if err != nil {
			return nil, err
		}
		// An anchor names what follows it, as written up to here; a
		// later anchor of the same name replaces it from there on.
		x.anchors[n.Name.GetToken().Value] = anchor{node: v, nodes: x.nodes - before}
		return v, nil
	case *ast.AliasNode:
		name := n.Value.GetToken().Value
		a, ok := x.anchors[name]
		if !ok {
			return nil, &nodeError{node: n, msg: "no anchor &" + name + " before this alias; define it above, like staging: &" + name + " {...}"}
		}
		if x.nodes += a.nodes; x.nodes > maxNodes {
			return nil, &nodeError{node: n, msg: "the file is too large with its aliases expanded; use fewer nested aliases"}
		}
		return a.node, nil
	case *ast.TagNode:
		c := *n
		var err error
		c.Value, err = x.node(n.Value)
		return &c, err
	case *ast.SequenceNode:
		c := *n
		c.Values = make([]ast.Node, len(n.Values))
		for i, v := range n.Values {
			e, err := x.node(v)
			if err != nil {
				return nil, err
			}
			c.Values[i] = e
		}
		return &c, nil
	case *ast.MappingValueNode:
		if !n.Key.IsMergeKey() {
			c := *n
			var err error
			c.Value, err = x.node(n.Value)
			return &c, err
		}
		// A mapping of one pair, and that pair is <<: make it a mapping.
		m := &ast.MappingNode{BaseNode: n.BaseNode, Start: n.Start, Values: []*ast.MappingValueNode{n}}
		return x.mapping(m)
	case *ast.MappingNode:
		return x.mapping(n)
	}
	return n, nil
}

func (x *expander) mapping(m *ast.MappingNode) (ast.Node, error) {
	explicit := map[string]bool{}
	for _, kv := range m.Values {
		if !kv.Key.IsMergeKey() {
			explicit[keyString(kv.Key)] = true
		}
	}
	c := *m
	c.Values = nil
	seen := map[string]bool{}
	for _, kv := range m.Values {
		if !kv.Key.IsMergeKey() {
			e, err := x.node(kv)
			if err != nil {
				return nil, err
			}
			c.Values = append(c.Values, e.(*ast.MappingValueNode))
			continue
		}
		merged, err := x.merged(kv)
		if err != nil {
			return nil, err
		}
		for _, mv := range merged {
			k := keyString(mv.Key)
			if explicit[k] || seen[k] {
				continue
			}
			seen[k] = true
			c.Values = append(c.Values, mv)
		}
	}
	return &c, nil
}

// merged returns the pairs a << key brings in, earlier mappings first.
func (x *expander) merged(kv *ast.MappingValueNode) ([]*ast.MappingValueNode, error) {
	v, err := x.node(kv.Value)
	if err != nil {
		return nil, err
	}
	sources := []ast.Node{v}
	if seq, ok := v.(*ast.SequenceNode); ok {
		sources = seq.Values
	}
	var out []*ast.MappingValueNode
	for _, s := range sources {
		switch s := s.(type) {
		case *ast.MappingNode:
			out = append(out, s.Values...)
		case *ast.MappingValueNode:
			out = append(out, s)
		default:
			return nil, &nodeError{node: kv.Key, msg: "<< merges a mapping or a list of mappings (like <<: *defaults), not " + strings.ToLower(s.Type().String())}
		}
	}
	return out, nil
}

// keyString is the key as decoded: quotes, escapes and tags removed, so
// "prepare", 'prepare' and prepare are one key.
func keyString(k ast.Node) string {
	switch k := k.(type) {
	case *ast.StringNode:
		return k.Value
	case *ast.MappingKeyNode:
		return keyString(k.Value)
	case *ast.TagNode:
		return keyString(k.Value)
	case *ast.AnchorNode:
		return keyString(k.Value)
	}
	if tk := k.GetToken(); tk != nil {
		return tk.Value
	}
	return k.String()
}
