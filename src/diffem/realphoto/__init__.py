"""Real photos: any size, real (non-circular) boundaries, unknown noise, 8/16-bit files.

    from diffem.realphoto import read_photo, deblur_photo
    photo = read_photo("blurry.jpg")
    result = deblur_photo(photo.pixels, compression_sigma=photo.compression_sigma)   # result.image (C,H,W), .kernel
"""
from diffem.physics import crop, wiener_deconv
from diffem.padding import pad_periodic
from diffem.realphoto.io import Photo, expand_inputs, read_photo, write_photo
from diffem.realphoto.noise import estimate_sigma
from diffem.realphoto.pipeline import PhotoResult, deblur_photo
from diffem.realphoto.tiling import deconv_valid, informative_window, map_tiles

__all__ = ["Photo", "PhotoResult", "crop", "deconv_valid", "deblur_photo", "estimate_sigma", "expand_inputs", "informative_window",
           "map_tiles", "pad_periodic", "read_photo", "wiener_deconv", "write_photo"]
