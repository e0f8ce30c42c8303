// ShardedAdamW::Impl's checkpoints: this rank's master/m/v shards, the step
// counters and the loss scaler, saved per rank and loaded by any world
// size.
//
// File (version 2): magic, version, rank, world, applied steps,
// iterations, loss scale, good steps, block count; per block (count,
// shard, dtype, the block's step count); an FNV-1a hash of all of that;
// then per block this rank's fp32 master, m and v shards. Version 1 is
// the same without the hash. Shards follow the saving world, so a rank
// of another world reads, from every saved file, only the ranges that
// overlap its own shard (file offsets follow from the block table).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/src/optim/sharded_adamw_impl.h"

namespace tidepool {

namespace {

constexpr char kMagic[8] = {'T', 'P', 'O', 'P', 'T', 'C', 'K', '1'};
constexpr uint32_t kCheckpointVersion = 2;

std::string CheckpointPath(absl::string_view dir, int rank, int world) {
  return absl::StrCat(dir, "/optimizer-rank", rank, "-of-", world, ".tpck");
}

uint64_t Fnv1a(const std::string& bytes) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  return h;
}

template <typename T>
void Append(std::string& out, const T& v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(v));
}

}  // namespace

struct ShardedAdamW::Impl::SavedHeader {
  uint32_t version = 0, nb = 0;
  int32_t rank = 0, world = 0, good = 0;
  int64_t step = 0, iterations = 0;
  float scale = 1;
  struct SavedBlock {
    uint64_t count = 0, shard = 0;
    int32_t dtype = 0;
    int64_t steps = 0;
  };
  std::vector<SavedBlock> blocks;
  uint64_t data_offset = 0;  // where block 0's master shard starts
};

absl::Status ShardedAdamW::Impl::Save(absl::string_view dir) {
  Drain();
  std::error_code ec;
  std::filesystem::create_directories(std::string(dir), ec);
  const std::string path = CheckpointPath(dir, comm_->rank(), comm_->world());
  const std::string tmp = path + ".tmp";
  std::string header(kMagic, sizeof(kMagic));
  Append(header, kCheckpointVersion);
  Append(header, static_cast<int32_t>(comm_->rank()));
  Append(header, static_cast<int32_t>(comm_->world()));
  Append(header, step_);
  Append(header, iterations_);
  Append(header, scaler_.scale());
  Append(header, static_cast<int32_t>(scaler_.good_steps()));
  Append(header, static_cast<uint32_t>(blocks_.size()));
  for (const Block& blk : blocks_) {
    Append(header, static_cast<uint64_t>(blk.param.count));
    Append(header, static_cast<uint64_t>(blk.shard));
    Append(header, static_cast<int32_t>(blk.param.dtype));
    Append(header, blk.steps);
  }
  Append(header, Fnv1a(header));
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return absl::PermissionDeniedError("cannot write " + tmp);
    out.write(header.data(), header.size());
    for (const Block& blk : blocks_) {
      TP_RETURN_IF_ERROR(
          WithState(blk, false, [&](float* master, float* m, float* v) {
            for (const float* p : {master, m, v}) {
              out.write(reinterpret_cast<const char*>(p),
                        blk.shard * sizeof(float));
            }
            return out ? absl::OkStatus()
                       : absl::DataLossError("checkpoint write " + tmp);
          }));
    }
    out.flush();
    if (!out) return absl::DataLossError("checkpoint write " + tmp);
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError("cannot rename " + tmp);
  return absl::OkStatus();
}

absl::StatusOr<int> ShardedAdamW::Impl::SavedWorld(
    absl::string_view dir) const {
  std::set<int> worlds;
  std::error_code ec;
  for (const auto& e :
       std::filesystem::directory_iterator(std::string(dir), ec)) {
    static const std::regex kName(R"(optimizer-rank(\d+)-of-(\d+)\.tpck)");
    std::smatch match;
    const std::string name = e.path().filename().string();
    if (std::regex_match(name, match, kName)) {
      const int w = std::atoi(match[2].str().c_str());
      if (w > 0) worlds.insert(w);
    }
  }
  if (worlds.empty()) {
    return absl::NotFoundError(absl::StrCat(
        "no optimizer checkpoint in ", dir,
        ec ? absl::StrCat(" (", ec.message(), ")") : std::string()));
  }
  if (worlds.size() > 1) {
    std::string list;
    for (int w : worlds) absl::StrAppend(&list, list.empty() ? "" : ", ", w);
    return absl::FailedPreconditionError(
        absl::StrCat(dir, " holds checkpoints saved by several world sizes (",
                     list, "); keep one save per directory"));
  }
  return *worlds.begin();
}

absl::StatusOr<ShardedAdamW::Impl::SavedHeader> ShardedAdamW::Impl::ReadHeader(
    std::ifstream& in, const std::string& path, int rank, int world) const {
  auto truncated = [&] { return absl::DataLossError(path + " is truncated"); };
  std::string bytes(sizeof(kMagic), '\0');
  in.read(bytes.data(), bytes.size());
  if (!in) return truncated();
  if (std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return absl::DataLossError(path + " is not a tidepool checkpoint");
  }
  auto get = [&](auto& v) {
    in.read(reinterpret_cast<char*>(&v), sizeof(v));
    bytes.append(reinterpret_cast<const char*>(&v), sizeof(v));
    return static_cast<bool>(in);
  };
  SavedHeader h;
  if (!get(h.version)) return truncated();
  if (h.version != 1 && h.version != kCheckpointVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": checkpoint version ", h.version,
                     " is not supported (", kCheckpointVersion, " and 1 are)"));
  }
  if (!get(h.rank) || !get(h.world) || !get(h.step) || !get(h.iterations) ||
      !get(h.scale) || !get(h.good) || !get(h.nb)) {
    return truncated();
  }
  if (h.nb > (1u << 24)) {
    return absl::DataLossError(
        absl::StrCat(path, " is corrupt (", h.nb, " blocks)"));
  }
  h.blocks.resize(h.nb);
  for (auto& b : h.blocks) {
    if (!get(b.count) || !get(b.shard) || !get(b.dtype) || !get(b.steps)) {
      return truncated();
    }
  }
  if (h.version >= 2) {
    const uint64_t want = Fnv1a(bytes);
    uint64_t hash = 0;
    in.read(reinterpret_cast<char*>(&hash), sizeof(hash));
    if (!in) return truncated();
    if (hash != want) {
      return absl::DataLossError(
          absl::StrCat(path, " is corrupt (header checksum mismatch)"));
    }
  }
  h.data_offset = static_cast<uint64_t>(in.tellg());
  if (h.rank != rank || h.world != world) {
    return absl::DataLossError(absl::StrCat(path, " holds rank ", h.rank,
                                            " of ", h.world, ", not ", rank,
                                            " of ", world));
  }
  if (h.nb != blocks_.size()) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": saved with ", h.nb,
                     " parameter blocks; this optimizer has ", blocks_.size()));
  }
  uint64_t data_bytes = 0;
  for (uint32_t b = 0; b < h.nb; ++b) {
    const auto& sb = h.blocks[b];
    const ParamBlock& p = blocks_[b].param;
    if (sb.count != p.count || sb.dtype != static_cast<int32_t>(p.dtype)) {
      return absl::FailedPreconditionError(
          absl::StrCat(path, ": block ", b, " was saved with ", sb.count,
                       " elements of dtype ", sb.dtype, "; this optimizer has ",
                       p.count, " of dtype ", static_cast<int32_t>(p.dtype)));
    }
    if (sb.shard != (sb.count + world - 1) / world) {
      return absl::DataLossError(absl::StrCat(path, " is corrupt (block ", b,
                                              " shard ", sb.shard, ")"));
    }
    data_bytes += 3 * sb.shard * sizeof(float);
  }
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec || size != h.data_offset + data_bytes) {
    return absl::DataLossError(
        absl::StrCat(path, " has ", size, " bytes; its header needs ",
                     h.data_offset + data_bytes,
                     size < h.data_offset + data_bytes ? " (truncated)" : ""));
  }
  return h;
}

absl::Status ShardedAdamW::Impl::Load(absl::string_view dir) {
  Drain();
  absl::Status local = absl::OkStatus();
  std::vector<std::ifstream> files;
  std::vector<SavedHeader> headers;
  int saved_world = 0;
  if (auto w = SavedWorld(dir); !w.ok()) {
    local = w.status();
  } else {
    saved_world = *w;
  }
  for (int k = 0; local.ok() && k < saved_world; ++k) {
    const std::string path = CheckpointPath(dir, k, saved_world);
    files.emplace_back(path, std::ios::binary);
    if (!files.back()) {
      local = absl::NotFoundError(absl::StrCat(
          path, " is missing (checkpoint of ", saved_world, " ranks)"));
      break;
    }
    auto h = ReadHeader(files.back(), path, k, saved_world);
    if (!h.ok()) {
      local = h.status();
      break;
    }
    const SavedHeader& first = headers.empty() ? *h : headers.front();
    bool same = h->step == first.step && h->iterations == first.iterations &&
                h->scale == first.scale && h->good == first.good;
    for (uint32_t b = 0; b < h->nb; ++b) {
      same &= h->blocks[b].steps == first.blocks[b].steps;
    }
    if (!same) {
      local = absl::FailedPreconditionError(absl::StrCat(
          path, " comes from another save than ",
          CheckpointPath(dir, 0, saved_world), " (step counters differ)"));
      break;
    }
    headers.push_back(*std::move(h));
  }
  TP_RETURN_IF_ERROR(AgreeOrFail(local, "load"));
  // Only the data reads are left to fail. State changes from here on.
  for (size_t b = 0; local.ok() && b < blocks_.size(); ++b) {
    local = LoadBlock(dir, static_cast<int>(b), saved_world, headers, files);
  }
  TP_RETURN_IF_ERROR(AgreeOrFail(local, "load"));
  for (size_t b = 0; b < blocks_.size(); ++b) {
    blocks_[b].steps = headers[0].blocks[b].steps;
    TP_RETURN_IF_ERROR(ParamsFromMaster(blocks_[b]));
  }
  step_ = headers[0].step;
  iterations_ = headers[0].iterations;
  scaler_.Restore(headers[0].scale, headers[0].good);
  return absl::OkStatus();
}

absl::Status ShardedAdamW::Impl::AgreeOrFail(const absl::Status& local,
                                             const char* what) {
  double failed = local.ok() ? 0.0 : 1.0;
  TP_RETURN_IF_ERROR(comm_->AllReduceSum(&failed, 1, DType::kF64));
  if (!local.ok()) return local;
  if (failed > 0) {
    return absl::AbortedError(absl::StrCat("optimizer: checkpoint ", what,
                                           " failed on ", failed,
                                           " other rank(s); see their errors"));
  }
  return absl::OkStatus();
}

absl::Status ShardedAdamW::Impl::LoadBlock(
    absl::string_view dir, int b, int saved_world,
    const std::vector<SavedHeader>& headers,
    std::vector<std::ifstream>& files) {
  const Block& blk = blocks_[b];
  const uint64_t old_shard = headers[0].blocks[b].shard;
  uint64_t before = 0;  // bytes of earlier blocks' data in every file
  for (int i = 0; i < b; ++i) {
    before += 3 * headers[0].blocks[i].shard * sizeof(float);
  }
  return WithState(blk, true, [&](float* master, float* m, float* v) {
    for (float* p : {master, m, v}) std::fill(p, p + blk.shard, 0.0f);
    const uint64_t lo = blk.begin, hi = blk.begin + blk.valid;
    for (int k = 0; k < saved_world && lo < hi; ++k) {
      const uint64_t k_lo = k * old_shard;
      const uint64_t from = std::max(lo, k_lo);
      const uint64_t to = std::min(hi, k_lo + old_shard);
      if (from >= to) continue;
      float* dst[3] = {master, m, v};
      for (int a = 0; a < 3; ++a) {
        const uint64_t offset = headers[k].data_offset + before +
                                (a * old_shard + (from - k_lo)) * sizeof(float);
        std::ifstream& in = files[k];
        in.seekg(static_cast<std::streamoff>(offset));
        in.read(reinterpret_cast<char*>(dst[a] + (from - lo)),
                (to - from) * sizeof(float));
        if (!in) {
          return absl::DataLossError(
              absl::StrCat("cannot read block ", b, " from ",
                           CheckpointPath(dir, k, saved_world)));
        }
      }
    }
    return absl::OkStatus();
  });
}

}  // namespace tidepool
