package tenant

import (
	"bytes"
	"context"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/namespace"
)

// KV serves the tenant's KV service: each request becomes a clientv3 operation, etcd's namespace wrapper moves its
// keys, ranges, compares and nested operations under the prefix and takes the prefix off the answer.
type KV struct {
	pb.UnimplementedKVServer // Compact: never reached, the allowlist refuses it first
	kv                       clientv3.KV
}

// NewKV serves the tenant's keys under prefix through upstream, the core etcd's KV.
func NewKV(upstream clientv3.KV, prefix Prefix) *KV {
	return &KV{kv: namespace.NewKV(confined{upstream, prefix}, string(prefix))}
}

func (s *KV) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	resp, err := s.kv.Do(ctx, rangeOp(r))
	if err != nil {
		return nil, upstreamError(ctx, err)
	}
	return (*pb.RangeResponse)(resp.Get()), nil
}

func (s *KV) Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	resp, err := s.kv.Do(ctx, putOp(r))
	if err != nil {
		return nil, upstreamError(ctx, err)
	}
	return (*pb.PutResponse)(resp.Put()), nil
}

func (s *KV) DeleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	resp, err := s.kv.Do(ctx, deleteOp(r))
	if err != nil {
		return nil, upstreamError(ctx, err)
	}
	return (*pb.DeleteRangeResponse)(resp.Del()), nil
}

func (s *KV) Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	op, err := txnOp(r)
	if err != nil {
		return nil, err
	}
	resp, err := s.kv.Do(ctx, op)
	if err != nil {
		return nil, upstreamError(ctx, err)
	}
	return (*pb.TxnResponse)(resp.Txn()), nil
}

// --- etcd requests as clientv3 operations: every field carried over, nothing added ---

func rangeOp(r *pb.RangeRequest) clientv3.Op {
	opts := []clientv3.OpOption{
		clientv3.WithLimit(r.Limit),
		clientv3.WithRev(r.Revision),
		clientv3.WithMinModRev(r.MinModRevision),
		clientv3.WithMaxModRev(r.MaxModRevision),
		clientv3.WithMinCreateRev(r.MinCreateRevision),
		clientv3.WithMaxCreateRev(r.MaxCreateRevision),
	}
	if len(r.RangeEnd) != 0 {
		opts = append(opts, clientv3.WithRange(string(r.RangeEnd)))
	}
	if r.SortOrder != pb.RangeRequest_NONE || r.SortTarget != pb.RangeRequest_KEY {
		opts = append(opts, clientv3.WithSort(clientv3.SortTarget(r.SortTarget), clientv3.SortOrder(r.SortOrder)))
	}
	if r.Serializable {
		opts = append(opts, clientv3.WithSerializable())
	}
	if r.KeysOnly {
		opts = append(opts, clientv3.WithKeysOnly())
	}
	if r.CountOnly {
		opts = append(opts, clientv3.WithCountOnly())
	}
	return clientv3.OpGet(string(r.Key), opts...)
}

func putOp(r *pb.PutRequest) clientv3.Op {
	var opts []clientv3.OpOption
	if r.Lease != 0 {
		opts = append(opts, clientv3.WithLease(clientv3.LeaseID(r.Lease)))
	}
	if r.PrevKv {
		opts = append(opts, clientv3.WithPrevKV())
	}
	if r.IgnoreValue {
		opts = append(opts, clientv3.WithIgnoreValue())
	}
	if r.IgnoreLease {
		opts = append(opts, clientv3.WithIgnoreLease())
	}
	return clientv3.OpPut(string(r.Key), string(r.Value), opts...)
}

func deleteOp(r *pb.DeleteRangeRequest) clientv3.Op {
	var opts []clientv3.OpOption
	if len(r.RangeEnd) != 0 {
		opts = append(opts, clientv3.WithRange(string(r.RangeEnd)))
	}
	if r.PrevKv {
		opts = append(opts, clientv3.WithPrevKV())
	}
	return clientv3.OpDelete(string(r.Key), opts...)
}

func txnOp(r *pb.TxnRequest) (clientv3.Op, error) {
	compares := make([]clientv3.Cmp, len(r.Compare))
	for i, compare := range r.Compare {
		if compare == nil { // policy.Check refuses these before a request gets here
			return clientv3.Op{}, fmt.Errorf("compare %d is empty: %w", i, errUnchecked)
		}
		// Field by field, as every other request: a copy of the message would carry its unknown fields upstream.
		compares[i] = clientv3.Cmp{Result: compare.Result, Target: compare.Target, Key: compare.Key,
			TargetUnion: compare.TargetUnion, RangeEnd: compare.RangeEnd}
	}
	success, err := ops(r.Success)
	if err != nil {
		return clientv3.Op{}, err
	}
	failure, err := ops(r.Failure)
	if err != nil {
		return clientv3.Op{}, err
	}
	return clientv3.OpTxn(compares, success, failure), nil
}

func ops(requests []*pb.RequestOp) ([]clientv3.Op, error) {
	result := make([]clientv3.Op, len(requests))
	for i, request := range requests {
		var err error
		result[i], err = op(request)
		if err != nil {
			return nil, fmt.Errorf("operation %d: %w", i, err)
		}
	}
	return result, nil
}

func op(request *pb.RequestOp) (clientv3.Op, error) {
	if request == nil {
		return clientv3.Op{}, errUnchecked
	}
	switch r := request.Request.(type) {
	case *pb.RequestOp_RequestRange:
		if r.RequestRange != nil {
			return rangeOp(r.RequestRange), nil
		}
	case *pb.RequestOp_RequestPut:
		if r.RequestPut != nil {
			return putOp(r.RequestPut), nil
		}
	case *pb.RequestOp_RequestDeleteRange:
		if r.RequestDeleteRange != nil {
			return deleteOp(r.RequestDeleteRange), nil
		}
	case *pb.RequestOp_RequestTxn:
		if r.RequestTxn != nil {
			return txnOp(r.RequestTxn)
		}
	}
	return clientv3.Op{}, errUnchecked // policy.Check refuses empty operations before a request gets here
}

// confined sits under the namespace wrapper and checks that every key the core answers lies under the prefix,
// before the wrapper cuts the prefix off by its length.
type confined struct {
	clientv3.KV
	prefix Prefix
}

func (c confined) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	resp, err := c.KV.Do(ctx, op)
	if err != nil {
		return resp, err
	}
	if get := resp.Get(); get != nil {
		err = c.checkRange((*pb.RangeResponse)(get))
	} else if put := resp.Put(); put != nil {
		err = c.checkKeys(put.PrevKv)
	} else if del := resp.Del(); del != nil {
		err = c.checkKeys(del.PrevKvs...)
	} else if txn := resp.Txn(); txn != nil {
		err = c.checkTxn((*pb.TxnResponse)(txn))
	}
	return resp, err
}

func (c confined) checkRange(resp *pb.RangeResponse) error {
	return c.checkKeys(resp.Kvs...)
}

func (c confined) checkKeys(kvs ...*mvccpb.KeyValue) error {
	for _, kv := range kvs {
		if kv != nil && !bytes.HasPrefix(kv.Key, []byte(c.prefix)) {
			return errOutside
		}
	}
	return nil
}

func (c confined) checkTxn(resp *pb.TxnResponse) error {
	for _, r := range resp.Responses {
		var err error
		switch tv := r.Response.(type) {
		case *pb.ResponseOp_ResponseRange:
			if tv.ResponseRange != nil {
				err = c.checkRange(tv.ResponseRange)
			}
		case *pb.ResponseOp_ResponsePut:
			if tv.ResponsePut != nil {
				err = c.checkKeys(tv.ResponsePut.PrevKv)
			}
		case *pb.ResponseOp_ResponseDeleteRange:
			if tv.ResponseDeleteRange != nil {
				err = c.checkKeys(tv.ResponseDeleteRange.PrevKvs...)
			}
		case *pb.ResponseOp_ResponseTxn:
			if tv.ResponseTxn != nil {
				err = c.checkTxn(tv.ResponseTxn)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}
