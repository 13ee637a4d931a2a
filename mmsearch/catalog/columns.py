"""The one definition of a product's columns: in a drop, in a release, in a search result.

Columns of a drop's products file beyond `KNOWN_COLUMNS` are kept as the product's attributes
(colour, material, ...). Cleaning turns `image_path` into the stored image (`image_file`) and its
perceptual hash (`image_phash`).
"""

REQUIRED_COLUMNS = ("product_id", "title")
# A drop's product columns, in the order the sample catalog writes them.
DROP_COLUMNS = ("product_id", "title", "description", "category", "brand", "price", "image_path")
# `deleted`: a row that removes its product_id from the catalog.
KNOWN_COLUMNS = (*DROP_COLUMNS, "deleted")
# What a search result shows of a product.
RESULT_FIELDS = ("product_id", "title", "category", "brand", "price", "image_file")
# What a release carries of each product, so search answers without the warehouse.
RELEASE_COLUMNS = [*RESULT_FIELDS, "image_phash", "attributes"]
