#!/usr/bin/env bash
# Writes the seed corpora of fuzz/corpus/ (in git; rerun after changing the
# input formats the targets document). Needs protoc, which encodes the
# request messages from text format.
set -euo pipefail
cd "$(dirname "$0")"
proto=../proto/tidepool.proto
out=corpus

# One record of grpc_requests_fuzzer: selector, length, serialized message.
record() {  # selector message-type text
  local bytes
  bytes=$(printf '%s' "$3" | protoc --proto_path=../proto --encode="tidepool.v1.$2" \
          "$proto" | xxd -p | tr -d '\n')
  printf '%02x%02x%s' "$1" $((${#bytes} / 2)) "$bytes"
}
seed() {  # directory name hex
  mkdir -p "$out/$1"
  printf '%s' "$3" | xxd -r -p >"$out/$1/$2"
}

# Selectors: method | 0x80 (the input's own session) | 0x40 (known tensors).
reg='tensors { name: "w" dtype: DTYPE_BF16 shape: [512, 512] group: GROUP_PARAM }
     tensors { name: "m" dtype: DTYPE_F32 shape: 262144 group: GROUP_OPTIM_STATE }
     tensors { name: "g" dtype: DTYPE_F32 shape: [3, 5, 7] group: GROUP_GRAD }'
g=grpc_requests_fuzzer
seed $g register-acquire-release "02$(record $((2|0x80)) RegisterTensorsRequest "$reg")$(
  record $((3|0xc0)) AcquireRequest 'tensor_ids: [0, 1] mode: ACCESS_READ_WRITE op_key: "fwd/0" op_seq: 1')$(
  record $((4|0xc0)) ReleaseRequest 'tensor_ids: [0, 1] target: TENSOR_STATE_HOLD')$(
  record $((5|0x80)) StatsRequest '')$(record $((6|0x80)) ChunkStateRequest '')"
seed $g auto-steps "04$(record $((2|0x80)) RegisterTensorsRequest "$reg")$(
  record $((3|0xc0)) AcquireRequest 'tensor_ids: [0] op_key: "a" op_seq: 1')$(
  record $((4|0xc0)) ReleaseRequest 'tensor_ids: [0] target: TENSOR_STATE_FREE')$(
  record $((7|0x80)) MarkStepRequest '')$(
  record $((3|0xc0)) AcquireRequest 'tensor_ids: [2] op_key: "b" op_seq: 2 location: LOCATION_PLACED')$(
  record $((7|0x80)) MarkStepRequest '')$(record $((12|0x80)) GetTraceRequest '')"
seed $g admin "02$(record 0 OpenSessionRequest 'policy: POLICY_STATIC client_name: "seed" chunk_size_bytes: 262144 placement { static_param_offload: 0.5 }')$(
  record 8 GetStatusRequest '')$(record 9 ListSessionsRequest '')$(
  record $((10|0x80)) ListChunksRequest '')$(record $((11|0x80)) GetTimelineRequest 'max_events: 4')$(
  record $((1|0x80)) CloseSessionRequest '')"

# hot_path_fuzzer: flags, then HotPathRequest images (op, arg, count,
# key_len, op_seq, non_model_bytes, op_key[120], tensor_ids[64]).
hot_request() {  # op arg count key ids...
  local op=$1 arg=$2 count=$3 key=$4; shift 4
  local hex keyhex
  hex=$(printf '%08x' "$op" "$arg" "$count" "${#key}" | sed 's/\(..\)\(..\)\(..\)\(..\)/\4\3\2\1/g')
  hex+=0100000000000000 hex+=0000000000000000
  keyhex=$(printf '%s' "$key" | xxd -p | tr -d '\n')
  hex+=$keyhex$(printf '%0*d' $((240 - ${#keyhex})) 0)
  local n=0
  for id in "$@"; do hex+=$(printf '%016x' "$id" | sed 's/\(..\)\(..\)\(..\)\(..\)\(..\)\(..\)\(..\)\(..\)/\8\7\6\5\4\3\2\1/'); n=$((n + 1)); done
  hex+=$(printf '%0*d' $(((64 - n) * 16)) 0)
  printf '%s' "$hex"
}
h=hot_path_fuzzer
# HotPathOp (proto/wire.h): 1 acquire, 2 acquire on host, 3 release,
# 4 acquire placed; arg: the access mode, or the release target. Flags:
# 0x80 (known tensors) + policy index (0x82 cpu, 0x83 static, 0x84 auto).
seed $h acquire-release "82$(hot_request 1 2 2 fwd/0 0 1)$(hot_request 3 3 2 '' 0 1)"
seed $h auto-placed "84$(hot_request 1 1 3 layer.0 4 5 6)$(hot_request 4 2 1 opt 7)$(hot_request 3 1 3 '' 4 5 6)$(hot_request 3 3 1 '' 7)"
seed $h on-host "83$(hot_request 2 1 4 '' 0 1 2 3)$(hot_request 3 1 4 '' 0 1 2 3)"

# config_fuzzer: TOML, NUL, flag values.
mkdir -p "$out/config_fuzzer"
cp ../deploy/config/tidepoold.toml "$out/config_fuzzer/deploy.toml"
printf 'socket = "/tmp/t.sock"\nhost_pool_bytes = "1GiB"\nchunk_size_bytes = 4194304\n[[device]]\nname = "sim"\nbackend = "sim"\npool_bytes = "64MiB"\nsim_link_gbps = 25\n\0' \
  >"$out/config_fuzzer/sim-device.toml"
printf 'default_policy = "auto"\n\x0016GiB\n64MiB\n1.5GB\n512KiB\n0\n' >"$out/config_fuzzer/flags"

# attach_fuzzer: flags, then AttachRequest (with 0x80: made valid) and
# MapRequests (magic "TPPM").
a=attach_fuzzer
mkdir -p "$out/$a"
printf '\x80' >"$out/$a/attach-map"
head -c 104 /dev/zero >>"$out/$a/attach-map"
printf 'TPPM\0\0\0\0TPPM\0\0\0\0' >>"$out/$a/attach-map"
printf '\x00TPA1\x03\x00\x00\x00' >"$out/$a/bad-token"
head -c 96 /dev/zero >>"$out/$a/bad-token"
