#include "format/chunk_source.h"

namespace shardwise::format {

std::vector<ItemRecord> Materialize(const ChunkSource& s) {
  std::vector<ItemRecord> items(s.ItemCount());
  for (std::size_t i = 0; i < items.size(); ++i) {
    const ItemView from = s.Item(i);
    ItemRecord& it = items[i];
    it.name = from.name;
    it.kind = from.kind;
    it.dtype = from.dtype;
    it.shape.assign(from.shape.begin(), from.shape.end());
    it.chunks.resize(s.ChunkCount(i));
    for (std::size_t k = 0; k < it.chunks.size(); ++k) {
      const ChunkView v = s.Chunk(i, k);
      ChunkRecord& c = it.chunks[k];
      c.offsets.assign(v.offsets.begin(), v.offsets.end());
      c.sizes.assign(v.sizes.begin(), v.sizes.end());
      c.file = v.file;
      c.offset = v.offset;
      c.length = v.length;
      c.crc32c.assign(v.crc32c.begin(), v.crc32c.end());
    }
  }
  return items;
}

}  // namespace shardwise::format
